"""Cache archives: carry verified entries and their blobs between caches as one file.

An archive is a gzip-compressed tar holding exactly::

    entries/<fingerprint>   an entry's raw envelope (as stored, signature included)
    blobs/<digest>          a blob's raw envelope
    manifest.json           format, version, and every member's xxh3-128 with what it is

Import is all-or-nothing: the archive is streamed member by member into temporary files
beside the cache (memory stays bounded by a 1 MiB chunk, the manifest of at most 16 MiB
and one entry's metadata, whatever the archive claims), every member must be a regular
file with exactly one of the names above (so ``../x``, absolute names, links and devices
are refused), the whole may expand to at most the cache's size limit and at most
:data:`MAX_RATIO` times the compressed bytes read (plus :data:`RATIO_SLACK`), so a
decompression bomb is refused after its first megabytes; every member must match the
manifest, and every envelope must pass the receiving cache's digest and signature checks,
streamed. Only then is anything written to the cache.
"""

from __future__ import annotations

import gzip
import io
import json
import pathlib
import re
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Final

import xxhash

from taskrun.atomic import atomic_file
from taskrun.cache import Cache, EntryMeta, shared_mode
from taskrun.errors import IntegrityError, UsageError

__all__ = ["ExportReport", "ImportReport", "export_archive", "import_archive"]

MANIFEST: Final = "manifest.json"
FORMAT: Final = "taskrun-cache-archive"
# 2: entries may be format-2 envelopes (TRC2, a hit head before the meta); version 1
# archives (TRC1 entries only) are still imported. An older taskrun refuses version 2.
VERSION: Final = 2
_READABLE_VERSIONS: Final = (1, 2)
_MEMBER = re.compile(r"(entries|blobs)/([0-9a-f]{32})\Z")
_CHUNK = 2**20
_TAR_SLACK = 2**20  # tar headers and padding on top of the envelopes themselves
MAX_RATIO: Final = 100  # an archive may expand to at most this many times its compressed bytes
RATIO_SLACK: Final = 64 * 2**20  # ... plus this (a small archive of a sparse file is fine)
MAX_MANIFEST: Final = 16 * 2**20  # bytes: the only member ever held in memory whole


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What :func:`export_archive` wrote, and what it left out and why."""

    path: pathlib.Path
    entries: tuple[str, ...]
    blobs: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (fingerprint, reason)
    size: int  # archive bytes


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What :func:`import_archive` took, found already present, or refused (and why).

    When anything is refused, nothing was taken: an archive enters whole or not at all.
    """

    path: pathlib.Path
    taken: tuple[str, ...]
    present: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]  # (member or archive name, reason)
    blobs: int
    tasks: Mapping[str, str] = field(default_factory=dict)  # fingerprint -> task, as verified

    @property
    def ok(self) -> bool:
        """True when the archive was accepted."""
        return not self.refused


def _digest(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # reproducible archives: same entries, same bytes
    tar.addfile(info, io.BytesIO(data))


def export_archive(
    cache: Cache, path: pathlib.Path | str, fingerprints: Iterable[str] | None = None
) -> ExportReport:
    """Write the given entries (default: those the last run used) with their blobs.

    Entries that are absent, bad or missing a blob are skipped and reported. The file
    appears atomically (written beside it, then renamed).
    """
    path = pathlib.Path(path)
    if cache.mode == "off":
        raise UsageError("cannot export: the cache is off (--cache-mode off)")
    if fingerprints is None:
        last = cache.last_run()
        if last is None:
            raise UsageError(
                f"no run is recorded in {cache.directory}; run first, or name what to export"
            )
        fingerprints = last.used
    wanted = sorted(set(fingerprints))
    manifest_entries: dict[str, Any] = {}
    manifest_blobs: dict[str, Any] = {}
    skipped: list[tuple[str, str]] = []
    # Durable: CI uploads the archive as soon as the command returns. Not mkstemp's
    # 0600: the directory's bits, so a team can read it.
    with (
        atomic_file(path, durable=True, mode=shared_mode(path.parent)) as f,
        gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        # perf: streamed member by member; only one envelope is in memory at a time.
        for fp in wanted:
            got = cache.read_entry_envelope(fp)
            if got is None:
                skipped.append((fp, "not in the cache (or unusable)"))
                continue
            meta, raw = got
            outputs = sorted({o.digest for o in meta.outputs})
            new_blobs = {}
            for digest in outputs:
                if digest in manifest_blobs:
                    continue
                blob = cache.read_blob_envelope(digest)
                if blob is None:
                    break
                new_blobs[digest] = blob
            else:
                _add(tar, f"entries/{fp}", raw)
                manifest_entries[fp] = {
                    "task": meta.task,
                    "digest": _digest(raw),
                    "product_digest": meta.product_digest,
                    "blobs": outputs,
                }
                for digest, blob in sorted(new_blobs.items()):
                    _add(tar, f"blobs/{digest}", blob)
                    manifest_blobs[digest] = {"digest": _digest(blob)}
                continue
            skipped.append((fp, "an output blob is missing (evicted?)"))
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "envelope": "TRC2",
            "signed": cache.signed,
            "entries": manifest_entries,
            "blobs": manifest_blobs,
        }
        _add(tar, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return ExportReport(
        path, tuple(manifest_entries), tuple(manifest_blobs), tuple(skipped), path.stat().st_size
    )


class _Refused(Exception):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


class _Counting(io.RawIOBase):
    """A read-only file that counts the (compressed) bytes read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        self.count += n or 0
        return n or 0


def _kind(member: tarfile.TarInfo) -> str:
    for test, name in (
        (member.issym, "symlink"),
        (member.islnk, "hard link"),
        (member.isdir, "directory"),
        (member.isdev, "device or fifo"),
    ):
        if test():
            return name
    return f"type {member.type!r}"


@dataclass(slots=True)
class _Unpacked:
    """Members streamed to files in ``directory``: name -> (path, xxh3-128 of the bytes)."""

    directory: pathlib.Path
    members: dict[str, tuple[pathlib.Path, str]] = field(default_factory=dict)


def _budget(limit: int, compressed: int) -> int:
    """Bytes a member stream may expand to: the cache's size and the declared ratio."""
    return min(limit, MAX_RATIO * compressed + RATIO_SLACK)


def _unpack(path: pathlib.Path, into: pathlib.Path, limit: int) -> _Unpacked:
    """Stream every member of the archive at PATH into files under INTO, checking as it goes.

    Memory stays bounded by one 1 MiB chunk plus tarfile's header buffers, whatever the
    archive holds: nothing is decompressed into memory. Refused (:class:`_Refused`): a
    member that is not a regular file or has an unexpected or repeated name, the manifest
    past :data:`MAX_MANIFEST`, and anything that expands past the cache's size limit or
    past :data:`MAX_RATIO` times the compressed bytes read so far (plus
    :data:`RATIO_SLACK`): a decompression bomb stops at its first megabytes.
    """
    out = _Unpacked(into)
    refused: list[tuple[str, str]] = []
    total = 0
    try:
        with path.open("rb") as raw_file:
            counted = _Counting(raw_file)
            buffered = io.BufferedReader(counted, _CHUNK)
            with (
                gzip.GzipFile(fileobj=buffered, mode="rb") as gz,
                tarfile.open(fileobj=gz, mode="r|") as tar,
            ):
                for member in tar:
                    name = member.name
                    if not member.isreg():
                        refused.append((name, f"not a regular file ({_kind(member)})"))
                        continue
                    if name != MANIFEST and not _MEMBER.match(name):
                        refused.append(
                            (
                                name,
                                "unexpected name (only manifest.json, entries/<hex>, blobs/<hex>)",
                            )
                        )
                        continue
                    if name in out.members:
                        refused.append((name, "appears twice"))
                        continue
                    if name == MANIFEST and member.size > MAX_MANIFEST:
                        raise _Refused(
                            [
                                (
                                    name,
                                    f"{member.size} bytes; a manifest may have "
                                    f"at most {MAX_MANIFEST}",
                                )
                            ]
                        )
                    if total + member.size > limit:
                        raise _Refused(
                            [
                                (
                                    name,
                                    f"more than {limit} bytes uncompressed, "
                                    "more than the cache can hold",
                                )
                            ]
                        )
                    stream = tar.extractfile(member)
                    assert stream is not None  # regular files always have data
                    target = into / f"{len(out.members):08d}"
                    hasher = xxhash.xxh3_128()
                    with target.open("xb") as f:
                        while chunk := stream.read(_CHUNK):
                            total += len(chunk)
                            if total > _budget(limit, counted.count):
                                why = (
                                    f"expands past {MAX_RATIO}:1 (decompression bomb?); "
                                    f"{total} bytes from {counted.count} compressed"
                                )
                                raise _Refused([(name, why)])
                            hasher.update(chunk)
                            f.write(chunk)
                    out.members[name] = (target, hasher.hexdigest())
                # Read to the end of the gzip stream: its CRC and length are checked there.
                while chunk := gz.read(_CHUNK):
                    total += len(chunk)
                    if total > _budget(limit, counted.count):
                        raise _Refused([(path.name, "trailing data expands past the limit")])
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        refused.append((path.name, f"not a valid tar archive: {exc}"))
    except OSError as exc:  # BadGzipFile is an OSError
        if not isinstance(exc, gzip.BadGzipFile) and exc.errno is not None:
            raise _Refused([(path.name, f"cannot unpack it: {exc}")]) from None
        refused.append((path.name, f"not a valid gzip file: {exc}"))
    if refused:
        raise _Refused(refused)
    return out


def _check(
    cache: Cache, unpacked: _Unpacked
) -> tuple[dict[str, pathlib.Path], dict[str, pathlib.Path], dict[str, EntryMeta]]:
    """Split members into entries and blobs, checking them against the manifest and cache."""
    refused: list[tuple[str, str]] = []
    members = dict(unpacked.members)
    manifest_member = members.pop(MANIFEST, None)
    try:
        if manifest_member is None:
            raise ValueError("missing")
        manifest = json.loads(manifest_member[0].read_bytes())  # at most MAX_MANIFEST
        version = manifest.get("version")
        if manifest.get("format") != FORMAT or version not in _READABLE_VERSIONS:
            raise ValueError(f"not a {FORMAT} of version 1 or 2 (version {version!r})")
        listed = {f"entries/{fp}": v["digest"] for fp, v in manifest["entries"].items()}
        listed |= {f"blobs/{d}": v["digest"] for d, v in manifest["blobs"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _Refused([(MANIFEST, f"unusable manifest: {exc}")]) from None
    for name in sorted(listed.keys() - members.keys()):
        refused.append((name, "listed in the manifest but not in the archive"))
    entries: dict[str, pathlib.Path] = {}
    blobs: dict[str, pathlib.Path] = {}
    metas: dict[str, EntryMeta] = {}
    for name, (file, digest) in sorted(members.items()):
        if name not in listed:
            refused.append((name, "not listed in the manifest"))
            continue
        if listed[name] != digest:
            refused.append((name, "does not match its manifest digest"))
            continue
        kind, _, hexname = name.partition("/")
        try:
            if kind == "entries":
                metas[hexname] = cache.check_entry_envelope(hexname, file)
                entries[hexname] = file
            else:
                cache.check_blob_envelope(hexname, file)
                blobs[hexname] = file
        except IntegrityError as exc:
            refused.append((name, str(exc)))
    for fp, meta in metas.items():
        for o in meta.outputs:
            if o.digest not in blobs and not cache.has_blob(o.digest):
                refused.append((f"entries/{fp}", f"its output blob {o.digest} is missing"))
    if refused:
        raise _Refused(refused)
    return entries, blobs, metas


def import_archive(cache: Cache, path: pathlib.Path | str) -> ImportReport:
    """Verify a whole archive, then add its entries and blobs to ``cache`` (mode rw only).

    Members are streamed to temporary files beside the cache (removed afterwards), each
    checked against the manifest and verified as an envelope, so memory stays bounded
    by a small constant (see :func:`_unpack`). Entries already present (complete and
    valid) are kept, the first one winning.
    """
    path = pathlib.Path(path)
    if cache.mode != "rw":
        raise UsageError(f"cannot import: the cache is in '{cache.mode}' mode; use --cache-mode rw")
    if not path.is_file():
        raise UsageError(f"no archive at {path}")
    try:
        with tempfile.TemporaryDirectory(dir=cache.directory, prefix=".import-") as tmp:
            unpacked = _unpack(path, pathlib.Path(tmp), cache.size_limit + _TAR_SLACK)
            entries, blobs, metas = _check(cache, unpacked)
            taken, present = cache.adopt(entries, blobs)
    except _Refused as exc:
        return ImportReport(path, (), (), tuple(exc.problems), 0)
    except IntegrityError as exc:  # the cache changed under us between check and adopt
        return ImportReport(path, (), (), ((path.name, str(exc)),), 0)
    return ImportReport(
        path, taken, present, (), len(blobs), {fp: m.task for fp, m in sorted(metas.items())}
    )
