"""A shared remote cache behind the local one: any fsspec URL, signed entries only.

A remote store holds, under its URL::

    entries/<fingerprint>   an entry envelope, exactly the bytes the local cache holds
    blobs/<digest>          an output blob envelope (content-addressed)
    index/<fingerprint>     the entry's meta without its payload, sealed under the name
                            "index/<fingerprint>": what gc and listing read
    tmp/...                 local directories only: files being written, renamed into place

Every object is written once and never modified: a put to a key that exists keeps what is
there (S3: a conditional ``If-None-Match: *`` PUT; local directories: a hard link from a
temporary file, which fails when the name exists; other stores: an existence check first).
Blobs are named by their content, so two writers of one blob write the same bytes; two
writers of one entry both write valid, signed envelopes, and the first one stays.

Trust: a remote store is shared, so with one the signing key is required
(``TASKRUN_CACHE_KEY``): envelopes are HMAC-signed under the name they are stored under,
and every object read is verified (:meth:`Cache.check_entry_envelope`,
:meth:`Cache.check_blob_envelope`) before its meta is parsed and long before anything is
unpickled. Only those holding the key (and write credentials for the store) can write an
entry another machine will accept.

The local cache is the first level. :meth:`RemoteCache.fetch` takes the fingerprints of a
ready wave that missed locally, fetches them in parallel threads within a timeout, verifies
them and adopts them into the local cache in one transaction (:meth:`Cache.adopt`), so the
scheduler's ordinary lookup then hits and restores outputs. :meth:`RemoteCache.upload`
queues what a run stored; background threads upload it (bounded queue) and
:meth:`RemoteCache.finish` waits for them at the end of the run.

A remote that is slow, down or answers with errors never fails a run: the first problem
turns it off for the rest of the run, with one warning. An object that fails verification
is refused (a miss) and never trusted; the first refusal is reported, the rest counted.

:class:`Store` is the narrow interface both levels share (get/put/has by key, list for
gc): :class:`FsspecStore` for remote stores, :class:`LocalStore` over a :class:`Cache`.
fsspec (and s3fs, gcsfs...) are imported only when a remote is configured.
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import contextlib
import datetime
import json
import os
import pathlib
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

from taskrun.atomic import atomic_write
from taskrun.cache_format import KIND_ENTRY, is_digest, open_envelope, seal
from taskrun.cache_values import EntryMeta, meta_json
from taskrun.errors import ConfigError, IntegrityError, UsageError, did_you_mean

__all__ = [
    "REMOTE_MODES",
    "FsspecStore",
    "LocalStore",
    "RemoteCache",
    "RemoteGcReport",
    "RemoteStats",
    "Store",
    "StoredObject",
    "open_remote",
]

RemoteMode = Literal["rw", "read", "off"]
REMOTE_MODES: Final = ("rw", "read", "off")
URL_ENV: Final = "TASKRUN_REMOTE_CACHE"
MODE_ENV: Final = "TASKRUN_REMOTE_MODE"
STATS_FILE: Final = "remote-last-run.json"
DEFAULT_TIMEOUT: Final = 30.0  # seconds without any answer before the remote is given up
_THREADS: Final = 8
_QUEUE: Final = 64  # entries waiting for upload before a store waits for room
_GRACE: Final = 3600.0  # gc leaves unreferenced blobs and temporaries younger than this

ENTRIES, BLOBS, INDEX = "entries/", "blobs/", "index/"


def entry_key(fingerprint: str) -> str:
    return ENTRIES + fingerprint


def blob_key(digest: str) -> str:
    return BLOBS + digest


def index_key(fingerprint: str) -> str:
    return INDEX + fingerprint


# --------------------------------------------------------------------------- stores


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object a store lists: its key, size in bytes and when it was written (epoch s)."""

    key: str
    size: int
    modified: float


class Store(abc.ABC):
    """Write-once bytes by key: the interface of the local and the remote level.

    Keys are ``entries/<fingerprint>`` and ``blobs/<digest>`` (and, remotely,
    ``index/<fingerprint>``); values are envelopes. ``put`` never replaces a value.
    """

    url: str

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None when there are none."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` unless something is there; True when written."""

    @abc.abstractmethod
    def has(self, key: str) -> bool:
        """True when something is stored under ``key``."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object whose key starts with ``prefix`` (``entries/``, ``blobs/``...)."""

    def delete(self, key: str) -> None:
        """Remove ``key`` if present (gc only)."""
        raise UsageError(f"{self.url} cannot delete objects one by one; use its own gc")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


class _Counters:
    """Requests (attempted) and bytes (moved) of a store; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes_down = 0
        self.bytes_up = 0

    def request(self) -> None:
        with self._lock:
            self.requests += 1

    def moved(self, *, down: int = 0, up: int = 0) -> None:
        with self._lock:
            self.bytes_down += down
            self.bytes_up += up


def _s3_defaults(timeout: float) -> dict[str, Any]:
    # Bounded waits: a remote that does not answer must not hold the run (or its exit:
    # the fetch threads are joined when the interpreter ends).
    return {
        "skip_instance_cache": True,  # one client per remote: a run's settings, not a process's
        "use_listings_cache": False,
        "config_kwargs": {
            "connect_timeout": timeout,
            "read_timeout": timeout,
            "retries": {"max_attempts": 2, "mode": "standard"},
        },
    }


S3FS_FLOOR: Final = (2024, 12)  # the first s3fs whose pipe_file(mode="create") is conditional


def _require_conditional_put(url: str) -> None:
    """ConfigError when the installed s3fs would overwrite where it should create.

    Older s3fs releases accept ``pipe_file(mode="create")`` and silently overwrite: the
    remote cache's write-once rule would no longer hold.
    """
    import s3fs  # url_to_fs imported it for this URL

    version = str(getattr(s3fs, "__version__", ""))
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return  # a development build: trust it
    if found < S3FS_FLOOR:
        raise ConfigError(
            f"the remote cache {url} needs s3fs >= {S3FS_FLOOR[0]}.{S3FS_FLOOR[1]} (its "
            f"conditional writes keep entries write-once); s3fs {version} is installed: "
            "pip install -U 'taskrun[remote]'"
        )


def _epoch(info: Mapping[str, Any]) -> float:
    for name in ("LastModified", "mtime", "created", "updated", "last_modified"):
        value = info.get(name)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


class FsspecStore(Store):
    """A store at any fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``file:///...``)."""

    # memory:// and stores without conditional writes check, then write; one lock per
    # process makes that atomic among this process's threads at least.
    _put_lock = threading.Lock()

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            import fsspec
        except ImportError:
            raise ConfigError(
                f"the remote cache {url} needs fsspec; install it with "
                "pip install 'taskrun[remote]'"
            ) from None
        protocol = fsspec.core.split_protocol(url)[0] or "file"
        options = dict(_s3_defaults(timeout)) if protocol in ("s3", "s3a") else {}
        options.update(storage_options or {})
        try:
            fs, root = fsspec.core.url_to_fs(url, **options)
        except ImportError as exc:
            raise ConfigError(
                f"the remote cache {url} needs a package fsspec names ({exc}); for S3 "
                "install pip install 'taskrun[remote]', for GCS also gcsfs"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"the remote cache URL {url!r} is not usable: {exc}") from None
        if protocol in ("s3", "s3a"):
            _require_conditional_put(url)
        self.url = url
        self.fs = fs
        self.protocol = protocol
        self.root = root.rstrip("/")
        self._local = protocol in ("file", "local")
        self.counters = _Counters()

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def get(self, key: str) -> bytes | None:
        self.counters.request()
        try:
            data = self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None
        self.counters.moved(down=len(data))
        return bytes(data)

    def has(self, key: str) -> bool:
        self.counters.request()
        return bool(self.fs.exists(self._path(key)))

    def put(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        self.counters.request()
        try:
            if self._local:
                self._put_local(path, data)
            elif self.protocol in ("s3", "s3a"):
                # S3's conditional PUT: atomic, and the object appears whole or not at all.
                self.fs.pipe_file(path, data, mode="create")
            else:
                with self._put_lock:
                    if self.fs.exists(path):
                        raise FileExistsError(path)
                    self.fs.pipe_file(path, data)
        except FileExistsError:
            return False
        self.counters.moved(up=len(data))
        return True

    def _put_local(self, path: str, data: bytes) -> None:
        final = pathlib.Path(path)
        if final.exists():
            raise FileExistsError(path)
        tmp_dir = pathlib.Path(self.root) / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{final.name}.{uuid.uuid4().hex}"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            # A hard link publishes the whole file under its name, or fails if one is there.
            os.link(tmp, final)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def list(self, prefix: str) -> Iterator[StoredObject]:
        base = self._path(prefix).rstrip("/")
        self.counters.request()
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return
        head = self.root + "/"
        for path, info in sorted(found.items()):
            full = self.fs._strip_protocol(path)
            if info.get("type") == "file" and full.startswith(head):
                yield StoredObject(full[len(head) :], int(info.get("size") or 0), _epoch(info))

    def delete(self, key: str) -> None:
        self.counters.request()
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))


class LocalStore(Store):
    """The local cache seen through :class:`Store`: values are verified on the way in and out."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.url = str(cache.directory)

    @staticmethod
    def _split(key: str) -> tuple[str, str]:
        for prefix in (ENTRIES, BLOBS):
            if key.startswith(prefix) and is_digest(key[len(prefix) :]):
                return prefix, key[len(prefix) :]
        raise UsageError(f"{key!r} is not a local cache key (entries/<fp> or blobs/<digest>)")

    def get(self, key: str) -> bytes | None:
        prefix, name = self._split(key)
        if prefix == ENTRIES:
            got = self.cache.read_entry_envelope(name)
            return None if got is None else bytes(got[1])
        raw = self.cache.read_blob_envelope(name)
        return None if raw is None else bytes(raw)

    def has(self, key: str) -> bool:
        prefix, name = self._split(key)
        return bool(self.cache.has_entry(name) if prefix == ENTRIES else self.cache.has_blob(name))

    def put(self, key: str, data: bytes) -> bool:
        prefix, name = self._split(key)
        if prefix == BLOBS:
            if self.cache.has_blob(name):
                return False
            self.cache.adopt({}, {name: data})
            return True
        taken, _present = self.cache.adopt({name: data}, {})
        return bool(taken)

    def list(self, prefix: str) -> Iterator[StoredObject]:
        if prefix == ENTRIES:
            for meta in self.cache.entries():
                got = self.cache.read_entry_envelope(meta.fingerprint)
                if got is not None:
                    yield StoredObject(entry_key(meta.fingerprint), len(got[1]), meta.created)
        elif prefix == BLOBS:
            for digest in self.cache.blob_names():
                raw = self.cache.read_blob_envelope(digest)
                if raw is not None:
                    yield StoredObject(blob_key(digest), len(raw), 0.0)
        else:
            raise UsageError(f"the local cache lists entries/ or blobs/, not {prefix!r}")


# --------------------------------------------------------------------------- the tier


@dataclass(slots=True)
class RemoteStats:
    """What the remote did for one run (written to the cache directory for ``cache info``)."""

    url: str
    mode: str
    hits: int = 0  # entries fetched, verified and adopted
    looked_up: int = 0  # local misses asked for
    refused: int = 0  # objects that failed verification
    uploaded: int = 0  # entries written
    already_there: int = 0  # entries another runner had written first
    requests: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    fetch_seconds: float = 0.0  # the run waited this long for lookups
    upload_seconds: float = 0.0  # background upload time
    finish_seconds: float = 0.0  # the run waited this long for uploads at its end
    failure: str = ""  # why the remote was turned off mid-run, if it was
    recorded: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RemoteStats:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, slots=True)
class RemoteGcReport:
    """What ``cache gc --remote`` removed."""

    removed: tuple[str, ...]
    removed_blobs: int
    kept: int
    refused: int  # index objects that failed verification (left alone)


@dataclass(slots=True)
class _Upload:
    fingerprint: str
    entry: bytes
    blobs: dict[str, bytes]
    index: bytes


def _mode_from(value: str, where: str) -> RemoteMode:
    if value not in REMOTE_MODES:
        raise ConfigError(
            f"{where}: remote mode {value!r} is not one of rw, read, off"
            + did_you_mean(value, REMOTE_MODES)
        )
    return value  # type: ignore[return-value]


def open_remote(
    url: str | None,
    mode: str | None,
    *,
    cache: Any,
    on_warning: Callable[[str], None],
    environ: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> RemoteCache | None:
    """The remote level for a run, or None when none is configured or it is off.

    ``url``/``mode`` come from the command line or ``[tool.taskrun]``; the environment
    (``TASKRUN_REMOTE_CACHE``, ``TASKRUN_REMOTE_MODE``) fills what they leave unset.
    Raises ConfigError when a remote is configured without a signing key.
    """
    env = os.environ if environ is None else environ
    url = url or env.get(URL_ENV) or None
    chosen = _mode_from(mode or env.get(MODE_ENV) or "rw", "--remote-mode")
    if not url or chosen == "off":
        return None
    if cache.mode != "rw":
        # A hit must be adopted into the local cache before it is restored; a read-only
        # or disabled local cache cannot take it, so the remote is not consulted.
        on_warning(
            f"the remote cache {url} is not used with cache mode '{cache.mode}' (its hits "
            "are copied into the local cache first); use --cache-mode rw, or --remote-mode off"
        )
        return None
    if not cache.signed:
        raise ConfigError(
            f"the remote cache {url} is shared, so its entries must be signed and verified, "
            "but TASKRUN_CACHE_KEY is not set; set it to the same secret on every machine "
            "that shares the store (e.g. from your CI's secret store), or run with "
            "--remote-mode off"
        )
    store = FsspecStore(url, timeout=timeout)
    return RemoteCache(store, mode=chosen, key=cache.key, on_warning=on_warning, timeout=timeout)


class RemoteCache:
    """The second level: fetch verified entries on local misses, upload new ones."""

    def __init__(
        self,
        store: Store,
        *,
        mode: RemoteMode,
        key: bytes,
        on_warning: Callable[[str], None],
        timeout: float = DEFAULT_TIMEOUT,
        threads: int = _THREADS,
        queue_size: int = _QUEUE,
    ) -> None:
        if mode not in ("rw", "read"):
            raise UsageError(f"a remote cache is used in mode rw or read, not {mode!r}")
        self.store = store
        self.mode: RemoteMode = mode
        self._key = key
        self._warn = on_warning
        self.timeout = timeout
        self._threads = threads
        self.stats = RemoteStats(url=store.url, mode=mode)
        self._lock = threading.Lock()
        self._failure = ""  # set (once) by whichever thread meets the first problem
        self._warned_failure = False
        self._refusal = ""  # the first refused object, reported once
        self._warned_refusal = False
        self._pool: cf.ThreadPoolExecutor | None = None
        self._queue: queue.Queue[_Upload | None] = queue.Queue(maxsize=queue_size)
        self._workers: list[threading.Thread] = []
        self._closed = False

    @property
    def url(self) -> str:
        return self.store.url

    @property
    def active(self) -> bool:
        """False once a problem turned the remote off for the rest of the run."""
        return not self._failure

    # ---- problems

    def _fail(self, reason: str) -> None:
        with self._lock:
            if not self._failure:
                self._failure = reason or "unknown error"
                self.stats.failure = self._failure

    def _refuse(self, what: str, reason: str) -> None:
        with self._lock:
            self.stats.refused += 1
            if not self._refusal:
                self._refusal = f"{what} ({reason})"

    def report(self) -> None:
        """Say (once each) that the remote was turned off, or that it sent something bad.

        Called on the driver's thread only: reporters are not thread-safe.
        """
        if self._failure and not self._warned_failure:
            self._warned_failure = True
            self._warn(
                f"the remote cache {self.url} failed ({self._failure}); "
                "this run goes on with the local cache only"
            )
        if self._refusal and not self._warned_refusal:
            self._warned_refusal = True
            self._warn(
                f"the remote cache {self.url} sent {self._refusal}; it was refused and "
                "treated as a miss (further refusals are counted in `taskrun cache info`). "
                "Check who can write to the store and that every writer uses the same "
                "TASKRUN_CACHE_KEY"
            )

    # ---- fetching

    def fetch(self, cache: Any, fingerprints: list[str]) -> list[str]:
        """Fetch, verify and adopt the entries for ``fingerprints`` (local misses).

        Returns the fingerprints now in the local cache. Never raises for the remote's
        sake: a failure turns the remote off (reported by :meth:`report`).
        """
        if not fingerprints or not self.active:
            self.report()
            return []
        started = time.perf_counter()
        self.stats.looked_up += len(fingerprints)
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(self._threads, thread_name_prefix="taskrun-remote")
        late = {self._pool.submit(self._fetch_one, cache, fp) for fp in fingerprints}
        done: set[cf.Future[Any]] = set()
        while late:
            # Slow is "nothing answered for the timeout", not "the batch took longer":
            # a large wave over a good connection may take a while and still be worth it.
            now, late = cf.wait(late, timeout=self.timeout, return_when=cf.FIRST_COMPLETED)
            if not now:
                for f in late:
                    f.cancel()
                self._fail(f"no answer for {self.timeout:g}s")
                break
            done |= now
        entries: dict[str, bytes] = {}
        blobs: dict[str, bytes] = {}
        for f in done:
            exc = f.exception()
            if exc is not None:
                self._fail(_describe(exc))
                continue
            got = f.result()
            if got is not None:
                entries[got[0]] = got[1]
                blobs.update(got[2])
        adopted: list[str] = []
        if entries and self.active:
            try:
                taken, present = cache.adopt(entries, blobs)
                adopted = [*taken, *present]
            except IntegrityError as exc:  # verified above: only a local change gets here
                self._refuse("a batch of entries", str(exc))
        self.stats.hits += len(adopted)
        self.stats.fetch_seconds += time.perf_counter() - started
        self.report()
        return adopted

    def _fetch_one(self, cache: Any, fp: str) -> tuple[str, bytes, dict[str, bytes]] | None:
        if not self.active:
            return None
        raw = self.store.get(entry_key(fp))
        if raw is None:
            return None
        try:
            # The HMAC and digest are checked before the meta is even parsed.
            meta = cache.check_entry_envelope(fp, raw)
        except IntegrityError as exc:
            self._refuse(f"entry {fp}", str(exc))
            return None
        blobs: dict[str, bytes] = {}
        for o in meta.outputs:
            if o.digest in blobs or cache.has_blob(o.digest):
                continue
            data = self.store.get(blob_key(o.digest))
            if data is None:
                return None  # gc removed it, or an upload is half done: a plain miss
            try:
                cache.check_blob_envelope(o.digest, data)
            except IntegrityError as exc:
                self._refuse(f"blob {o.digest} of entry {fp}", str(exc))
                return None
            blobs[o.digest] = data
        return fp, raw, blobs

    # ---- uploading

    def upload(self, cache: Any, fingerprints: list[str]) -> None:
        """Queue the entries a run just stored for upload (mode rw); waits only for room."""
        if self.mode != "rw" or not fingerprints:
            return
        for fp in fingerprints:
            if not self.active:
                break
            got = cache.read_entry_envelope(fp)
            if got is None:
                continue
            meta, raw = got
            blobs: dict[str, bytes] = {}
            for o in meta.outputs:
                data = cache.read_blob_envelope(o.digest)
                if data is None:
                    break
                blobs[o.digest] = bytes(data)
            else:
                index = seal(KIND_ENTRY, index_key(fp), meta_json(meta), b"", self._key)
                self._enqueue(_Upload(fp, bytes(raw), blobs, index))
        self.report()

    def _enqueue(self, item: _Upload) -> None:
        if not self._workers:
            for n in range(min(self._threads, 4)):
                t = threading.Thread(
                    target=self._upload_loop, name=f"taskrun-upload-{n}", daemon=True
                )
                t.start()
                self._workers.append(t)
        try:
            # perf: the queue is bounded so that a slow remote holds memory, not the run,
            # until it is full; then the run waits for room, at most the timeout.
            self._queue.put(item, timeout=self.timeout)
        except queue.Full:
            self._fail(f"uploads did not keep up for {self.timeout:g}s")

    def _upload_loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self.active:
                    started = time.perf_counter()
                    try:
                        self._upload_one(item)
                    except Exception as exc:  # noqa: BLE001 - any store error: the remote is off
                        self._fail(_describe(exc))
                    with self._lock:
                        self.stats.upload_seconds += time.perf_counter() - started
            finally:
                self._queue.task_done()

    def _upload_one(self, item: _Upload) -> None:
        # Blobs first, then the entry, then its index: a reader that finds an entry
        # finds its blobs (unless gc raced it: then it is a miss, never a wrong hit).
        for digest, data in item.blobs.items():
            key = blob_key(digest)
            if not self.store.has(key):
                self.store.put(key, data)
        written = self.store.put(entry_key(item.fingerprint), item.entry)
        self.store.put(index_key(item.fingerprint), item.index)
        with self._lock:
            if written:
                self.stats.uploaded += 1
            else:
                self.stats.already_there += 1

    def pending(self) -> int:
        """Entries queued or being uploaded."""
        return self._queue.unfinished_tasks

    def finish(self, on_progress: Callable[[int], None] | None = None) -> RemoteStats:
        """Wait for the uploads (reporting how many are left), stop the threads, sum up.

        Gives up waiting when no upload completes for the timeout (the remote is then off).
        """
        started = time.perf_counter()
        last, last_change = (0 if self._closed else self.pending()), time.monotonic()
        if last and on_progress is not None:
            on_progress(last)
        while last and self.pending():
            with self._queue.all_tasks_done:
                self._queue.all_tasks_done.wait(timeout=1.0)
            now = self.pending()
            if now != last:
                last, last_change = now, time.monotonic()
                if now and on_progress is not None:
                    on_progress(now)
            elif time.monotonic() - last_change > self.timeout or not self.active:
                self._fail(self._failure or f"uploads stalled for {self.timeout:g}s")
                break
        self.stats.finish_seconds = time.perf_counter() - started
        self.close()
        self.report()
        counters = getattr(self.store, "counters", None)
        if counters is not None:
            self.stats.requests = counters.requests
            self.stats.bytes_down = counters.bytes_down
            self.stats.bytes_up = counters.bytes_up
        self.stats.recorded = time.time()
        return self.stats

    def close(self) -> None:
        """Stop the threads (uploads still queued are dropped)."""
        if self._closed:
            return
        self._closed = True
        if self.pending():
            self._fail(self._failure or "the run stopped before its uploads were done")
        for _ in self._workers:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=self.timeout)
        self._workers = []
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # ---- maintenance

    def gc(self, *, max_age: float, now: float | None = None) -> RemoteGcReport:
        """Remove entries written more than ``max_age`` seconds ago, then unreferenced blobs.

        Entries are aged by the signed ``created`` time in their index; an index that fails
        verification is left alone (and counted). Blobs no remaining entry references,
        entries without an index and temporaries are removed once older than an hour, so
        that an upload in progress is never cut short.
        """
        if self.mode != "rw":
            raise UsageError(f"cannot clean {self.url} in remote mode {self.mode}; use rw")
        now = time.time() if now is None else now
        cutoff = now - max_age
        removed: list[str] = []
        kept: dict[str, EntryMeta] = {}
        refused = 0
        for obj in self.store.list(INDEX):
            fp = obj.key[len(INDEX) :]
            raw = self.store.get(obj.key) if is_digest(fp) else None
            meta = self._index_meta(fp, raw) if raw is not None else None
            if meta is None:
                refused += 1
                continue
            if meta.created < cutoff:
                self.store.delete(entry_key(fp))
                self.store.delete(obj.key)
                removed.append(fp)
            else:
                kept[fp] = meta
        wanted = {o.digest for m in kept.values() for o in m.outputs}
        old = now - _GRACE
        for obj in self.store.list(ENTRIES):
            fp = obj.key[len(ENTRIES) :]
            if fp not in kept and fp not in removed and obj.modified < old:
                self.store.delete(obj.key)
        removed_blobs = 0
        for obj in self.store.list(BLOBS):
            if obj.key[len(BLOBS) :] not in wanted and obj.modified < old:
                self.store.delete(obj.key)
                removed_blobs += 1
        for obj in self.store.list("tmp/"):
            if obj.modified < old:
                self.store.delete(obj.key)
        return RemoteGcReport(tuple(sorted(removed)), removed_blobs, len(kept), refused)

    def _index_meta(self, fp: str, raw: bytes) -> EntryMeta | None:
        import io

        try:
            opened = open_envelope(
                io.BytesIO(raw), kind=KIND_ENTRY, name=index_key(fp), key=self._key
            )
            meta = EntryMeta.from_dict(json.loads(opened.meta))
        except (IntegrityError, ValueError):
            return None
        return meta if meta.fingerprint == fp else None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def write_stats(directory: pathlib.Path, stats: RemoteStats) -> None:
    """Record the run's remote numbers beside the local cache (for ``cache info``)."""
    path = directory / STATS_FILE
    with contextlib.suppress(OSError):  # informational: a run never fails for it
        atomic_write(path, json.dumps(stats.to_dict(), indent=1).encode(), durable=False)


def read_stats(directory: pathlib.Path) -> RemoteStats | None:
    """What :func:`write_stats` recorded last, or None."""
    try:
        data = json.loads((directory / STATS_FILE).read_text(encoding="utf-8"))
        return RemoteStats.from_dict(data)
    except (OSError, ValueError, TypeError):
        return None
