"""Download one artifact: the file is opened before the answer starts and streamed from that
open descriptor, so a job removing or replacing it meanwhile cannot break the answer half-way
(a path opened only while streaming raised after the headers had gone out)."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import trio
from quart import Response

from lmeval_trio.outputs.logs import open_inside
from lmeval_trio.policy.secrets import masked_chunks

CHUNK_BYTES = 256 * 1024


def _open_regular(path: Path) -> tuple[BinaryIO, int]:
    """The file open for reading and its size; OSError if it is gone, not a regular file, or
    not at ``path`` itself. Artifact paths hold no symlink (results.list_artifacts builds them
    from resolved roots, never through a link), so a descriptor whose real path differs was
    reached through a link the job swapped in (for the file or a folder above it)."""
    fd = open_inside(path, (path,))
    file = open(fd, "rb", buffering=0)  # noqa: SIM115  (closed by the stream)
    return file, os.fstat(fd).st_size


async def file_response(path: Path, secrets: tuple[str, ...] = ()) -> Response:
    """A streamed attachment of ``path`` (raises OSError if it cannot be opened), with every
    one of ``secrets`` masked (the child may have written a credential anywhere)."""
    file, size = await trio.to_thread.run_sync(_open_regular, path)
    mimetype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if secrets:  # masking changes the length: no Content-Length
        response = Response(masked_chunks(_chunks(file, size), secrets), 200, mimetype=mimetype)
    else:
        response = Response(_chunks(file, size), 200, mimetype=mimetype)
        response.headers["Content-Length"] = str(size)
    response.headers.set("Content-Disposition", "attachment", filename=path.name)
    return response


async def _chunks(file: BinaryIO, size: int) -> AsyncIterator[bytes]:
    """Exactly ``size`` bytes (what Content-Length promised); zeros if the file shrank."""
    try:
        remaining = size
        while remaining > 0:
            chunk = await trio.to_thread.run_sync(file.read, min(CHUNK_BYTES, remaining))
            if not chunk:
                chunk = bytes(min(CHUNK_BYTES, remaining))
            remaining -= len(chunk)
            yield chunk
    finally:
        file.close()
