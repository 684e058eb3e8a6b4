"""Object access for handlers through fsspec, so a local folder and s3:// take the same code
path. Keys are checked before they become paths; writes are allowed only under the
function's declared outputs and are noted (hop + 1) before the object appears."""

from __future__ import annotations

import os
import posixpath
import unicodedata
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import IO, cast

import fsspec

from dropwire.functions.kit.errors import DropwireError


class InvalidKey(DropwireError):
    code = "invalid_key"


class OutputNotDeclared(DropwireError):
    code = "output_not_declared"
    http_status = 403


def check_key(key: str) -> str:
    """The key if it is safe to map onto a path, else InvalidKey saying what is wrong.
    Spaces, '+', '%' and unicode are fine; '..' segments, absolute paths and control
    characters are not. Unicode must be in one form, NFC: 'café' spelled with a combining
    accent (NFD, as some Mac tools write names) would otherwise be a second object that
    prints the same as the first."""
    if not key:
        raise InvalidKey("the object key is empty")
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        raise InvalidKey(f"object key {key!r} contains control characters")
    if not unicodedata.is_normalized("NFC", key):
        nfc = unicodedata.normalize("NFC", key)
        # The key escaped (its two spellings print alike), the name to use as it prints.
        raise InvalidKey(f"object key {key!a} is not in Unicode NFC form, the one form dropwire keeps keys in "
                         f"(so that one name is one object); rename it to '{nfc}', which prints the same",
                         key=key, nfc=nfc)
    if key.startswith("/"):
        raise InvalidKey(f"object key {key!r} is an absolute path; keys are relative to the bucket")
    if ".." in key.split("/") or "." in key.split("/"):
        raise InvalidKey(f"object key {key!r} contains '.' or '..' segments")
    if key.endswith("/"):
        raise InvalidKey(f"object key {key!r} names a folder, not an object")
    return key


def url_to_fs(url: str, storage_options: dict[str, dict] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec's filesystem and path for a URL (or local path), with the options configured
    for its protocol ({"s3": {"client_kwargs": {...}}}: e.g. an S3-compatible endpoint)."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    return fsspec.core.url_to_fs(url, **(storage_options or {}).get(protocol, {}))


def open_for_writing(path: str) -> bool | None:
    """Whether some process has a local file open for writing (the kernel refuses a read
    lease then); None where a lease cannot tell (not Linux, leases off, another user's file,
    some network filesystems)."""
    try:
        import fcntl

        lease = fcntl.F_SETLEASE  # Linux's
    except (ImportError, AttributeError):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, lease, fcntl.F_RDLCK)
    except BlockingIOError:
        return True
    except OSError:
        return None
    else:
        fcntl.fcntl(fd, lease, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


class ObjectStore:
    """`roots` maps a bucket name to a URL root: {"local": "file:///srv/bucket", "raw": "s3://raw"}."""

    def __init__(self, roots: dict[str, str], storage_options: dict[str, dict] | None = None) -> None:
        self.roots = {bucket: root.rstrip("/") for bucket, root in roots.items()}
        self.storage_options = storage_options or {}

    def url(self, bucket: str, key: str) -> str:
        try:
            root = self.roots[bucket]
        except KeyError:
            raise DropwireError(f"bucket {bucket!r} is not configured; known buckets: {sorted(self.roots)}") from None
        return f"{root}/{check_key(key)}"

    def filesystem(self, bucket: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The fsspec filesystem of a bucket and the bucket's root path on it."""
        self.url(bucket, "x")  # a bucket that is not configured is named as such
        return url_to_fs(self.roots[bucket], self.storage_options)

    def open(self, bucket: str, key: str, mode: str = "rb") -> IO:
        """A stream over the object (never the whole object in memory)."""
        if "r" not in mode:
            raise DropwireError("ObjectStore.open is for reading; write with ObjectWriter.write or put_file")
        fs, root = self.filesystem(bucket)
        # fsspec types its files as IOBase, which IO's protocol does not cover.
        return cast(IO, fs.open(posixpath.join(root, check_key(key)), mode))

    def local_path(self, bucket: str, key: str) -> str | None:
        """A local file path for the object when the bucket is a local folder, else None."""
        fs, root = self.filesystem(bucket)
        return posixpath.join(root, check_key(key)) if "file" in fs.protocol else None

    def local_state(self, bucket: str, key: str) -> tuple[str | None, bool | None] | None:
        """For an object of a local folder: its version as the folder source names it
        (mtime_ns-size; None when it is gone) and whether someone has it open for writing
        (None: cannot tell). None for other stores."""
        try:
            path = self.local_path(bucket, key)
        except DropwireError:
            return None
        if path is None:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None, False
        return f"{stat.st_mtime_ns}-{stat.st_size}", open_for_writing(path)

    def modified(self, bucket: str, key: str) -> datetime | None:
        """When the object was last written, or None if there is no such object."""
        fs, root = self.filesystem(bucket)
        path = posixpath.join(root, check_key(key))
        if not fs.exists(path):
            return None
        stamp = fs.modified(path)
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)

    def delete(self, bucket: str, key: str) -> bool:
        """Remove the object; False when there was none."""
        fs, root = self.filesystem(bucket)
        path = posixpath.join(root, check_key(key))
        if not fs.exists(path):
            return False
        fs.rm(path)
        return True

    def write_bytes(self, bucket: str, key: str, data: bytes) -> str:
        """Write atomically (a hidden temporary name, then a rename on local folders) so that
        a watcher never sees a half-written object; returns the object's URL."""
        return self.write_stream(bucket, key, [data])[0]

    def write_stream(self, bucket: str, key: str, parts: Iterable[bytes]) -> tuple[str, int]:
        """write_bytes for content made piece by piece (never whole in memory); returns the
        object's URL and its size."""
        fs, root = self.filesystem(bucket)
        target = posixpath.join(root, check_key(key))
        parent = posixpath.dirname(target)
        fs.makedirs(parent, exist_ok=True)
        local = "file" in fs.protocol
        path = posixpath.join(parent, f".{posixpath.basename(target)}.{uuid.uuid4().hex}.tmp") if local else target
        size = 0
        try:
            with cast(IO[bytes], fs.open(path, "wb")) as out:  # fsspec types the file as text or binary
                for part in parts:
                    out.write(part)
                    size += len(part)
        except BaseException:
            # The parts ended in an error (e.g. an upload refused midway): nothing is left behind.
            if fs.exists(path):
                fs.rm(path)
            raise
        if local:
            fs.mv(path, target)
        return self.url(bucket, key), size

class ObjectWriter:
    """What a handler writes with: only under its declared outputs, each write noted with
    its hop count before the object appears (so the event it causes finds it)."""

    def __init__(self, store: ObjectStore, may_write: Callable[[str, str], bool], note: Callable[[str, str], None],
                 function: str) -> None:
        self.store = store
        self._may_write = may_write
        self._note = note
        self._function = function
        self.written: list[tuple[str, str]] = []

    def write_bytes(self, bucket: str, key: str, data: bytes) -> str:
        return self.write_stream(bucket, key, [data])[0]

    def write_stream(self, bucket: str, key: str, parts: Iterable[bytes]) -> tuple[str, int]:
        check_key(key)
        if not self._may_write(bucket, key):
            raise OutputNotDeclared(f"function {self._function!r} may not write {bucket}/{key}: it is outside the "
                                    "output prefixes the function declared")
        self._note(bucket, key)
        written = self.store.write_stream(bucket, key, parts)
        self.written.append((bucket, key))
        return written

    def put_file(self, bucket: str, key: str, local_path: str) -> str:
        with open(local_path, "rb") as source:
            return self.write_bytes(bucket, key, source.read())
