"""Run folders on storage that outlives the driver's machine: ``output_dir: s3://...``,
``gs://...`` or ``file://...`` (anything pyarrow opens, like ``context_uri``).

The driver works in a local copy (``$AJPQ_MIRROR_DIR``, else ``~/.cache/ajpq/mirrors``, one
folder per URI) and pushes what changed to the URI every ``every_s`` seconds and when the search
ends, however it ends; ``--resume`` on a fresh machine first pulls the latest run down. The
journal (SQLite) is copied through SQLite's backup API, so the pushed copy is always a
consistent database. A pod lost between two pushes loses at most ``every_s`` of run-folder
state; the records of that window are in MLflow, and ``--resume`` scores them again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["is_uri", "mirror_root", "RunMirror", "PUSH_EVERY_S"]

logger = logging.getLogger(__name__)

PUSH_EVERY_S = 30.0
_SQLITE_HEADER = b"SQLite format 3\x00"
_SKIP_SUFFIXES = ("-wal", "-shm", "-journal")


def is_uri(location: str) -> bool:
    """Whether ``location`` names remote storage (``scheme://``) rather than a folder."""
    return "://" in location


def mirror_root() -> Path:
    return Path(os.environ.get("AJPQ_MIRROR_DIR") or Path.home() / ".cache" / "ajpq" / "mirrors")


class RunMirror:
    """A local working copy of the folder tree at ``uri``, pushed back as it changes."""

    def __init__(self, uri: str, local: Path | None = None, every_s: float = PUSH_EVERY_S) -> None:
        from pyarrow import fs

        self.uri = uri.rstrip("/")
        self.fs, self.root = fs.FileSystem.from_uri(self.uri)
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self.local = Path(local) if local else mirror_root() / digest
        self.local.mkdir(parents=True, exist_ok=True)
        self.every_s = every_s
        self._pushed: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- down ----------------------------------------------------------------------------------
    def pull(self, relative: str) -> int:
        """Copy the file or folder tree at ``relative`` (under the URI) into the local copy;
        returns the number of files copied (0: nothing there)."""
        from pyarrow import fs

        source = f"{self.root}/{relative}".rstrip("/")
        info = self.fs.get_file_info(source)
        if info.type == fs.FileType.NotFound:
            return 0
        if info.type == fs.FileType.File:
            infos = [info]
        else:
            infos = self.fs.get_file_info(fs.FileSelector(source, recursive=True))
        copied = 0
        for item in infos:
            if item.type != fs.FileType.File:
                continue
            target = self.local / item.path[len(self.root) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(item.path) as stream:
                target.write_bytes(stream.read())
            stat = target.stat()
            self._pushed[str(target)] = (stat.st_size, stat.st_mtime_ns)
            copied += 1
        return copied

    # -- up ------------------------------------------------------------------------------------
    def push(self) -> int:
        """Upload every local file that changed since it was last pushed or pulled; returns
        how many were uploaded."""
        with self._lock:
            uploaded = 0
            for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
                if path.name.endswith(_SKIP_SUFFIXES):
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:  # removed while we walked
                    continue
                key = str(path)
                stamp = (stat.st_size, stat.st_mtime_ns)
                wal = path.with_name(path.name + "-wal")
                if wal.exists():  # a database's changes may sit in its WAL file
                    stamp = (stamp[0] + wal.stat().st_size, max(stamp[1], wal.stat().st_mtime_ns))
                if self._pushed.get(key) == stamp:
                    continue
                self._upload(path)
                self._pushed[key] = stamp
                uploaded += 1
            return uploaded

    def _upload(self, path: Path) -> None:
        relative = path.relative_to(self.local).as_posix()
        target = f"{self.root}/{relative}"
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with path.open("rb") as handle:
            is_db = handle.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
        if is_db:
            with tempfile.TemporaryDirectory() as staging:
                copy = Path(staging) / path.name
                source, dest = sqlite3.connect(path), sqlite3.connect(copy)
                try:
                    source.backup(dest)
                finally:
                    source.close()
                    dest.close()
                data = copy.read_bytes()
        else:
            data = path.read_bytes()
        with self.fs.open_output_stream(target) as stream:
            stream.write(data)

    # -- while a search runs ---------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.push()
            except Exception as error:  # noqa: BLE001 - storage may be down for a while
                logger.warning(
                    "could not push the run folder to %s (%s); retrying", self.uri, error
                )

    def __enter__(self) -> RunMirror:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ajpq-mirror", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            count = self.push()
            logger.info("run folder pushed to %s (%d file(s))", self.uri, count)
        except Exception as failure:  # noqa: BLE001 - the local copy still holds everything
            logger.error(
                "could not push the run folder to %s (%s); it is complete in %s",
                self.uri,
                failure,
                self.local,
            )
