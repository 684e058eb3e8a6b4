"""`POST /v1/files` as a stream: the multipart body is parsed as it arrives (the `multipart`
package's push parser, which Litestar itself uses), the part `file` goes on into the bucket
piece by piece, and the size limit is enforced on the bytes received, so the upload is never
whole in memory, and one over the limit is refused without being stored."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import multipart
from litestar.exceptions import HTTPException

from dropwire.functions.kit.errors import DropwireError

# The file's pieces wait here for the thread that writes them (a bound on what is held).
QUEUED_PIECES = 16
# Form fields other than the file are short (purpose, expires_after[...]).
MAX_FIELD_BYTES = 1024
MAX_PARTS = 16


class InvalidUpload(DropwireError):
    code = "invalid_request_error"


class FileTooLarge(DropwireError):
    http_status = 413
    code = "file_too_large"


@dataclass
class Received:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    #: Bytes of the file part stored (None: the form had no part `file`).
    size: int | None = None


class _Stop(Exception):
    """The upload ended before its file did: the writer drops what it wrote."""


def _pieces(waiting: queue.Queue) -> Iterator[bytes]:
    while (piece := waiting.get()) is not None:
        if isinstance(piece, _Stop):
            raise piece
        yield piece


def _stop(waiting: queue.Queue, writer: asyncio.Future | None) -> None:
    """Make the writer drop its file: what it has not taken is discarded, then _Stop."""
    if writer is None:
        return
    while not waiting.empty():
        waiting.get_nowait()
    waiting.put_nowait(_Stop())


async def receive(body: AsyncIterator[bytes], content_type: str, *, max_bytes: int,
                  write: Callable[[Iterator[bytes]], int]) -> Received:
    """Parse the multipart `body`; the part `file` goes to `write` (run in a thread, given
    the pieces as they come; returns the size written). Past `max_bytes` of file: 413, and
    `write` ends by an exception (what it wrote it must remove)."""
    kind, options = multipart.parse_options_header(content_type)
    if kind != "multipart/form-data" or not options.get("boundary"):
        raise InvalidUpload(f"the upload must be multipart/form-data with a boundary, got {content_type!r}",
                            param="file")
    received = Received()
    waiting: queue.Queue = queue.Queue(QUEUED_PIECES)
    writer: asyncio.Future | None = None
    loop = asyncio.get_running_loop()

    async def hand(piece: object) -> None:
        if waiting.full():  # the bucket is slower than the client: wait without blocking the loop
            await asyncio.to_thread(waiting.put, piece)
        else:
            waiting.put_nowait(piece)

    name: str | None = None
    value = bytearray()
    size = 0
    try:
        with multipart.PushMultipartParser(options["boundary"], max_segment_count=MAX_PARTS) as parser:
            async for chunk in body:
                for event in parser.parse(chunk):
                    if isinstance(event, multipart.MultipartSegment):
                        name, value = event.name, bytearray()
                        if name == "file":
                            if writer is not None:
                                raise InvalidUpload("the upload has more than one part 'file'", param="file")
                            received.filename = event.filename
                            writer = loop.run_in_executor(None, write, _pieces(waiting))
                    elif event is None:
                        if name == "file":
                            await hand(None)
                        elif name is not None:
                            received.fields[name] = value.decode("utf-8", "replace")
                        name = None
                    elif name == "file":
                        size += len(event)
                        if size > max_bytes:
                            raise FileTooLarge(f"the file is larger than the limit of {max_bytes} bytes "
                                               "(batches.max_bytes)", limit=max_bytes)
                        await hand(event)
                    else:
                        value += event
                        if len(value) > MAX_FIELD_BYTES:
                            raise InvalidUpload(f"form field {name!r} is longer than {MAX_FIELD_BYTES} bytes", param=name)
    except asyncio.CancelledError:  # the client went away
        _stop(waiting, writer)
        raise
    except Exception as exc:
        _stop(waiting, writer)
        if writer is not None:
            await asyncio.gather(writer, return_exceptions=True)
        if isinstance(exc, multipart.MultipartError):
            raise InvalidUpload(f"the multipart upload is malformed: {exc}", param="file") from None
        if isinstance(exc, HTTPException) and exc.status_code == 413:  # the whole body is past the gateway's limit
            raise FileTooLarge(f"the upload is larger than the gateway accepts; a file may have at most {max_bytes} "
                               "bytes (batches.max_bytes)", limit=max_bytes) from None
        # Read (and drop) the rest, so the client gets this answer instead of a broken pipe.
        async for _ in body:
            pass
        raise
    if writer is not None:
        received.size = await writer
    return received
