"""Publishing the search context to workers: Ray's object store (the default) or one file on
storage every node reads (``context_uri``: ``s3://``, ``gs://``, a mounted path). Driver side
publishes, worker side resolves; no worker reads the driver's disk."""

from __future__ import annotations

import io
import logging
import socket

import ray
import torch

from ajpq.search.context import ContextSource, DataSource, SearchContext

__all__ = ["ObjectStoreSource", "UriSource", "publish_context"]

logger = logging.getLogger(__name__)


class ObjectStoreSource:
    """The context and data as objects in Ray's object store (the default)."""

    def __init__(self, context_ref: object, data_ref: object) -> None:
        self.context_ref = context_ref
        self.data_ref = data_ref

    def context(self) -> SearchContext:
        return ray.get(self.context_ref)

    def data(self) -> DataSource:
        return ray.get(self.data_ref)


class UriSource:
    """The context and data in one file on storage every node reads (``s3://``, ``gs://``, a
    mounted path), written once by the driver; read through pyarrow's filesystems."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._payload: dict | None = None  # read once per process, never shipped

    def __getstate__(self) -> dict:
        return {"uri": self.uri, "_payload": None}

    def _load(self) -> dict:
        if self._payload is None:
            self._payload = self._read()
        return self._payload

    def _read(self) -> dict:
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(self.uri)
        try:
            with filesystem.open_input_stream(path) as stream:
                payload = stream.read()
        except (FileNotFoundError, OSError) as error:
            raise FileNotFoundError(
                f"node {socket.gethostname()}: cannot read the search context at {self.uri} "
                f"({error}); context_uri must be storage that every node can read"
            ) from None
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)

    def context(self) -> SearchContext:
        return self._load()["context"]

    def data(self) -> DataSource:
        return self._load()["data"]

    @classmethod
    def write(cls, uri: str, context: SearchContext, data: DataSource) -> UriSource:
        from pyarrow import fs

        buffer = io.BytesIO()
        torch.save({"context": context, "data": data}, buffer)
        filesystem, path = fs.FileSystem.from_uri(uri)
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(buffer.getvalue())
        return cls(uri)


def publish_context(
    context: SearchContext, data: DataSource, uri: str | None = None
) -> ContextSource:
    """Make the context reachable from every node: Ray's object store, or ``uri``. Driver only."""
    if uri:
        logger.info("search context written to %s", uri)
        return UriSource.write(uri, context, data)

    return ObjectStoreSource(ray.put(context), ray.put(data))
