"""The durable record of a search: every evaluated policy is appended here (SQLite in the run
folder, fsync'd) before anything else happens to it. MLflow is a replica that a writer fills
from the journal, with retries: a tracking server that is down for minutes delays records, it
never loses them, and ``ajpq sync <run dir>`` pushes whatever is still waiting. ``--resume``
reads the scored policies from here."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from ajpq.core.configtypes import to_plain
from ajpq.core.policy import CompressionPolicy
from ajpq.search.record import PolicyRecord
from ajpq.task.scoring import ScoreSettings

__all__ = ["Journal", "policy_key"]


def policy_key(policy_json: str, settings: ScoreSettings) -> str:
    """Cache key: canonical policy JSON + everything that changes the score."""
    canonical = CompressionPolicy.from_json(policy_json).to_json()
    fingerprint = json.dumps(
        {"finetune": to_plain(settings.finetune), "val": settings.val_samples},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256((canonical + fingerprint).encode()).hexdigest()[:24]


class Journal:
    """Append-only table of (record, policy JSON, MLflow run id once written), by policy key."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (policy_key TEXT PRIMARY KEY, "
            "episode INTEGER NOT NULL, record TEXT NOT NULL, policy TEXT NOT NULL, run_id TEXT)"
        )

    def append(self, record: PolicyRecord, policy_json: str) -> None:
        """Durably add a scored policy (a key already present is kept as it was, unless it was
        an infrastructure failure: a later attempt replaces that)."""
        self._db.execute(
            "DELETE FROM records WHERE policy_key = ? AND record LIKE ?",
            (record.policy_key, '%"infra_failed": true%'),
        )
        self._db.execute(
            "INSERT OR IGNORE INTO records (policy_key, episode, record, policy, run_id) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                record.policy_key,
                record.episode,
                json.dumps(record.to_dict()),
                policy_json,
                record.run_id,
            ),
        )

    def mark_written(self, policy_key: str, run_id: str, episode: int | None = None) -> None:
        """Note the MLflow run of a record (of ``episode``: a replaced row is not marked)."""
        if episode is None:
            self._db.execute(
                "UPDATE records SET run_id = ? WHERE policy_key = ?", (run_id, policy_key)
            )
        else:
            self._db.execute(
                "UPDATE records SET run_id = ? WHERE policy_key = ? AND episode = ?",
                (run_id, policy_key, episode),
            )

    def records(self) -> dict[str, PolicyRecord]:
        """The policies' verdicts by key (infrastructure failures are left out: a resumed
        search scores them again)."""
        rows = self._db.execute("SELECT record, run_id FROM records ORDER BY episode").fetchall()
        out = {}
        for text, run_id in rows:
            record = PolicyRecord.from_dict(json.loads(text))
            record.run_id = run_id
            if not record.infra_failed:
                out[record.policy_key] = record
        return out

    def last_episode(self) -> int:
        """The highest episode number journaled (infrastructure failures included)."""
        return self._db.execute("SELECT COALESCE(MAX(episode), 0) FROM records").fetchone()[0]

    def unwritten(self) -> list[tuple[PolicyRecord, str]]:
        """Records not yet in MLflow, in episode order, with their policy JSON."""
        rows = self._db.execute(
            "SELECT record, policy FROM records WHERE run_id IS NULL ORDER BY episode"
        ).fetchall()
        return [(PolicyRecord.from_dict(json.loads(text)), policy) for text, policy in rows]

    def record(self, policy_key: str) -> PolicyRecord | None:
        """A policy's verdict by key (None: not journaled, or an infrastructure failure)."""
        row = self._db.execute(
            "SELECT record FROM records WHERE policy_key = ?", (policy_key,)
        ).fetchone()
        record = PolicyRecord.from_dict(json.loads(row[0])) if row else None
        return None if record is None or record.infra_failed else record

    def policy_json(self, policy_key: str) -> str | None:
        row = self._db.execute(
            "SELECT policy FROM records WHERE policy_key = ?", (policy_key,)
        ).fetchone()
        return row[0] if row else None

    def waiting(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM records WHERE run_id IS NULL").fetchone()[0]

    def close(self) -> None:
        self._db.close()
