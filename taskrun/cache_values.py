"""The cache's value objects: entry metadata, output records, and what operations report.

They are plain frozen data, shared by :mod:`taskrun.cache`, :mod:`taskrun.archive` and the
``cache`` commands; :mod:`taskrun.cache` re-exports them.
"""

from __future__ import annotations

import enum
import json
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from taskrun.cache_format import is_digest
from taskrun.errors import IntegrityError, UsageError

__all__ = [
    "CacheInfo",
    "EntryMeta",
    "GcReport",
    "LastRun",
    "OutputRecord",
    "StoreResult",
    "VerifyProblem",
    "VerifyReport",
    "human_size",
    "meta_json",
    "unsafe_path",
]


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One output file of an entry: relative posix path, blob digest, permission bits."""

    path: str
    digest: str
    mode: int
    size: int


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """What the cache knows about an entry without unpickling its product."""

    fingerprint: str
    task: str
    components: Mapping[str, Any]  # the fingerprint's inputs, for `explain`; opaque here
    product_digest: str
    compute_time: float
    created: float
    outputs: tuple[OutputRecord, ...]
    size: int  # payload bytes; store() sets it from the payload

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return {
            "fingerprint": self.fingerprint,
            "task": self.task,
            "components": dict(self.components),
            "product_digest": self.product_digest,
            "compute_time": self.compute_time,
            "created": self.created,
            "outputs": [
                {"path": o.path, "digest": o.digest, "mode": o.mode, "size": o.size}
                for o in self.outputs
            ],
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, data: Any) -> EntryMeta:
        """Rebuild from :meth:`to_dict`; raises IntegrityError on any wrong shape."""
        try:
            outputs = tuple(
                OutputRecord(str(o["path"]), str(o["digest"]), int(o["mode"]), int(o["size"]))
                for o in data["outputs"]
            )
            meta = cls(
                fingerprint=str(data["fingerprint"]),
                task=str(data["task"]),
                components=dict(data["components"]),
                product_digest=str(data["product_digest"]),
                compute_time=float(data["compute_time"]),
                created=float(data["created"]),
                outputs=outputs,
                size=int(data["size"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"entry metadata has the wrong shape: {exc!r}") from None
        for o in outputs:
            if unsafe_path(o.path) or not is_digest(o.digest):
                raise IntegrityError(f"entry metadata names an unsafe output {o.path!r}")
        return meta


def unsafe_path(path: str) -> bool:
    # Outputs are restored under the project root: nothing absolute, nothing climbing out.
    parts = path.split("/")
    return not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts)


# perf: one encoder for every entry; json.dumps with options builds one per call. The
# bytes are those of json.dumps(..., sort_keys=True, separators=(",", ":"), allow_nan=False).
_META_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def meta_json(meta: EntryMeta) -> bytes:
    try:
        text = _META_ENCODER.encode(meta.to_dict())
    except (TypeError, ValueError) as exc:
        raise UsageError(f"entry metadata of task '{meta.task}' is not JSON-able: {exc}") from exc
    return text.encode("utf-8")


class StoreResult(str, enum.Enum):
    """What :meth:`Cache.store` did. Truthy when an entry for the fingerprint now exists."""

    STORED = "stored"
    KEPT_SAME = "kept-existing-same"  # an entry existed with the same product digest
    KEPT_DIFFERENT = "kept-existing-different"  # ...with another digest: not reproducible
    NOT_WRITABLE = "not-writable"  # mode is read or off
    FAILED = "failed"  # an I/O error; reported through on_warning
    REPLACED = "replaced"  # an entry existed; asked to (--force), the new one replaced it

    def __bool__(self) -> bool:
        return self in (
            StoreResult.STORED,
            StoreResult.KEPT_SAME,
            StoreResult.KEPT_DIFFERENT,
            StoreResult.REPLACED,
        )

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class LastRun:
    """What the last recorded run used."""

    used: frozenset[str]
    hits: int
    misses: int
    recorded: float


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """Counts and sizes of a cache, and the last run's hit rate."""

    directory: pathlib.Path
    mode: str
    signed: bool
    entries: int
    blobs: int
    size_bytes: int
    size_limit: int
    last_run_hits: int | None
    last_run_misses: int | None
    orphan_files: int = 0  # value files no index row names (rollbacks, kills); gc removes them
    orphan_bytes: int = 0

    @property
    def hit_rate(self) -> float | None:
        """Hits over lookups in the last recorded run, or None."""
        if self.last_run_hits is None or self.last_run_misses is None:
            return None
        total = self.last_run_hits + self.last_run_misses
        return self.last_run_hits / total if total else None


@dataclass(frozen=True, slots=True)
class GcReport:
    """What :meth:`Cache.gc` removed."""

    removed: tuple[str, ...]  # fingerprints of removed entries
    removed_blobs: int
    kept: int
    freed_bytes: int
    removed_orphans: int = 0  # value files no index row named (left by rollbacks and kills)
    removed_imports: int = 0  # temporary directories of archive imports that were killed


@dataclass(frozen=True, slots=True)
class VerifyProblem:
    """One bad entry or blob found by :meth:`Cache.verify`."""

    kind: Literal["entry", "blob"]
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :meth:`Cache.verify` checked and found; ``removed`` when bad items were deleted."""

    entries: int
    blobs: int
    problems: tuple[VerifyProblem, ...]
    removed: bool

    @property
    def ok(self) -> bool:
        """True when nothing was wrong."""
        return not self.problems


def human_size(size: int) -> str:
    """``1.5 MiB``: bytes as ``du -h`` would say them (powers of 1024)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
