"""What vlpipe asks of the storage under --output, and how it talks to it.

- **Writes are atomic without renames on object stores.** A single PUT to S3 or GCS is atomic (a
  reader sees the whole object or nothing), so parts, markers, manifests and state go straight to
  their final keys: one request, nothing that asks a listing cache whether a temp object exists.
  A local or mounted filesystem has no such guarantee: there a file is written under a temp name
  and renamed.
- **No listing cache.** s3fs and gcsfs cache directory listings per filesystem instance and answer
  `exists`/`info` from them; an output's filesystem is made without one, and the driver's
  progress polling gets an instance of its own, so nothing it lists can change what a write sees.
- **Retries are explicit.** Transient errors (503 SlowDown, 5xx, dropped connections, timeouts)
  are retried with exponential backoff and jitter by the client (botocore's "standard" mode on
  S3), `retries` attempts in all; a permanent error (access denied, no such bucket) is not.
- **Errors say what happened**: a `StorageError` names the operation, the path and the storage's
  own message, in one line.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator
from typing import IO

import fsspec

from vlpipe.errors import VlpipeError

#: protocols whose single PUT is atomic and whose "rename" is a copy and a delete
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oci", "oss"})
#: attempts per request (the first one included) unless the user chooses (--storage-retries)
DEFAULT_RETRIES = 5
TMP_PREFIX = ".tmp-"


class StorageError(VlpipeError):
    """A storage request that failed for good: operation, path and the storage's message."""


def protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return tuple(proto) if isinstance(proto, (tuple, list)) else (proto,)


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    return bool(OBJECT_STORES.intersection(protocols(fs)))


def url_protocol(url: str) -> str:
    return fsspec.core.split_protocol(url)[0] or "file"


def client_options(protocol: str, retries: int = DEFAULT_RETRIES) -> dict:
    """Filesystem arguments that make the client's retry policy explicit."""
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {"retries": {"max_attempts": retries, "mode": "standard"}}}
    return {}


def configure_retries(retries: int = DEFAULT_RETRIES) -> None:
    """Every S3 filesystem this process makes from now on (inputs too) retries as asked. Called
    by the driver and by each worker (a remote worker has none of the driver's settings)."""
    conf = fsspec.config.conf.setdefault("s3", {})
    ours = client_options("s3", retries)["config_kwargs"]
    conf["config_kwargs"] = {**conf.get("config_kwargs", {}), **ours}


def output_fs(url: str, private: bool = False) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and root path of an output URL, without a listing cache on object stores.
    `private`: an instance shared with nobody (the driver's poller)."""
    kwargs: dict = {}
    if url_protocol(url) in OBJECT_STORES:
        kwargs["use_listings_cache"] = False
        if private:
            kwargs["skip_instance_cache"] = True
    return fsspec.core.url_to_fs(url, **kwargs)


def small_read_options(fs: fsspec.AbstractFileSystem) -> dict:
    """cat_file arguments for a small object: one GET (s3fs would first HEAD it to decide
    whether to download it in concurrent ranges)."""
    return {"max_concurrency": 1} if {"s3", "s3a"} & set(protocols(fs)) else {}


# ---- errors ------------------------------------------------------------------------------------


def storage_message(exc: BaseException) -> str:
    """The storage's own words for an error: its error code and message where it gave them."""
    for err in (exc, exc.__cause__, exc.__context__):
        response = getattr(err, "response", None)
        if isinstance(response, dict) and response.get("Error"):
            code = response["Error"].get("Code") or ""
            message = response["Error"].get("Message") or ""
            return f"{code}: {message}".strip(": ") or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) if str(exc) not in ("", "None") else ""
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def storage_error(op: str, fs: fsspec.AbstractFileSystem, path: str, exc: BaseException):
    """A one-line StorageError: `write s3://out/run/_done/x.json failed: SlowDown: ...`."""
    try:
        url = fs.unstrip_protocol(path)
    except Exception:  # noqa: BLE001 - the message matters more than the exact URL
        url = path
    return StorageError(f"{op} {url} failed: {storage_message(exc)}")


def storage_errors() -> tuple[type[BaseException], ...]:
    """Exception types a storage client raises for a failed request (not programming errors)."""
    types: list[type[BaseException]] = [OSError]
    with contextlib.suppress(ImportError):
        from botocore.exceptions import BotoCoreError, ClientError

        types += [BotoCoreError, ClientError]
    with contextlib.suppress(ImportError):
        from aiohttp import ClientError as HttpClientError

        types.append(HttpClientError)
    return tuple(types)


@contextlib.contextmanager
def reporting(op: str, fs: fsspec.AbstractFileSystem, path: str) -> Iterator[None]:
    """Turns a storage client's error inside the block into a one-line StorageError."""
    try:
        yield
    except StorageError:
        raise
    except storage_errors() as exc:
        raise storage_error(op, fs, path, exc) from exc


# ---- writes ------------------------------------------------------------------------------------


def put(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> int:
    """Write `data` to `path` so a reader sees all of it or nothing; returns the size written.
    Object stores: one PUT to the final key. Elsewhere: a temp file beside it, then a rename."""
    with reporting("write", fs, path):
        if is_object_store(fs):
            fs.pipe_file(path, data)
            return len(data)
        folder, name = posixpath.split(path)
        tmp = posixpath.join(folder, f"{TMP_PREFIX}{name}")
        fs.makedirs(folder, exist_ok=True)
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    return len(data)


def put_new(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Create `path` only if nothing is there (S3's If-None-Match: *, a local exclusive create);
    False if something was. The one atomic test-and-set the run lease needs."""
    with reporting("create", fs, path):
        try:
            if is_object_store(fs):
                try:
                    fs.pipe_file(path, data, mode="create")
                except (TypeError, NotImplementedError):  # a client without conditional writes
                    if fs.exists(path):  # test-then-set: not atomic, the best it offers
                        return False
                    fs.pipe_file(path, data)
            else:
                fs.makedirs(posixpath.dirname(path), exist_ok=True)
                with fs.open(path, "xb") as f:
                    f.write(data)
        except FileExistsError:
            return False
    return True


@contextlib.contextmanager
def open_for_write(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[IO[bytes]]:
    """A file to stream into that appears at `path` whole when the block ends, and not at all if
    it raises. Object stores: a multipart upload, completed at the end or aborted. Elsewhere: a
    temp file and a rename."""
    with reporting("write", fs, path):
        if is_object_store(fs):
            f = fs.open(path, "wb")
            try:
                yield f
            except BaseException:
                f.discard()  # aborts the upload: the object never appears
                f.closed = True  # so that no later close() uploads what was buffered
                raise
            f.close()
            return
        folder, name = posixpath.split(path)
        tmp = posixpath.join(folder, f"{TMP_PREFIX}{name}")
        fs.makedirs(folder, exist_ok=True)
        try:
            with fs.open(tmp, "wb") as f:
                yield f
        except BaseException:
            with contextlib.suppress(OSError):
                fs.rm(tmp)
            raise
        fs.mv(tmp, path)


def listing(fs: fsspec.AbstractFileSystem, folder: str, detail: bool = False) -> list:
    """A folder's entries, fresh (never from a cache); [] for a folder that is not there.
    On S3 one LIST either way (s3fs's `ls` lists the parent too when a folder is empty)."""
    fs.invalidate_cache(folder)
    with reporting("list", fs, folder):
        if is_object_store(fs) and hasattr(fs, "_lsdir"):  # s3fs
            from fsspec.asyn import sync

            entries = sync(fs.loop, fs._lsdir, folder.rstrip("/"))
            return entries if detail else [e["name"] for e in entries]
        try:
            return fs.ls(folder, detail=detail)
        except FileNotFoundError:
            return []
