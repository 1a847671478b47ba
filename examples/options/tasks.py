"""Typed options and predicates: every value is parsed and checked before anything runs.

The types below are declared once with `define_type` and reused. A type checks its
parent's predicate first, then its own, so `UserPort` is a `Port` (1-65535) that is also
at least 1024, and its error says which rule a value broke.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Literal

from taskrun import File, define_type, task

# -- types ---------------------------------------------------------------------------------
Port = define_type("Port", int, lambda v: 1 <= v <= 65535, doc="a TCP port (1-65535)")
UserPort = define_type(
    "UserPort",
    Port,
    lambda v: v >= 1024,
    doc="a port an unprivileged user may bind (1024-65535)",
)
PositiveInt = define_type("PositiveInt", int, lambda v: v > 0, doc="an integer above 0")
Replicas = define_type("Replicas", PositiveInt, lambda v: v <= 16, doc="1 to 16 replicas")
Percent = define_type("Percent", float, lambda v: 0 <= v <= 100, doc="a percentage (0-100)")
Slug = define_type(
    "Slug",
    str,
    lambda s: re.fullmatch(r"[a-z][a-z0-9-]*", s) is not None,
    doc="lowercase letters, digits and dashes, starting with a letter",
)

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """'90' or '90s' -> 90.0, '1.5m' -> 90.0, '2h' -> 7200.0."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 90, 1.5m or 2h")
    return float(match[1]) * _UNITS[match[2] or "s"]


Duration = define_type(
    "Duration",
    float,
    lambda v: v > 0,
    parse=parse_duration,
    doc="a duration above 0: seconds, or with a unit (1.5m, 2h)",
)


class Level(enum.Enum):
    """Log levels, chosen by name on the command line (-o level=DEBUG)."""

    DEBUG = 10
    INFO = 20
    WARNING = 30


# -- tasks ---------------------------------------------------------------------------------
@task
def settings(
    tags: list[Slug],
    limits: dict[str, Percent],
    name: Slug = "demo",
    port: UserPort = 8080,
    replicas: Replicas = 2,
    mode: Literal["dev", "staging", "prod"] = "dev",
    level: Level = Level.INFO,
    grace: Duration = 30.0,
    timeout: float | None = None,
    motd: File | None = None,
) -> dict[str, str]:
    """Check and normalise a service's settings (TAGS and LIMITS come from pyproject.toml)."""
    # Every value here is already of its type and passed its predicates.
    out = {
        "name": name,
        "port": str(port),
        "replicas": str(replicas),
        "mode": mode,
        "level": level.name,
        "tags": ",".join(tags),
        "limits": json.dumps(limits, sort_keys=True),
        "grace": f"{grace:g}s",
        "timeout": "none" if timeout is None else f"{timeout:g}s",
    }
    if motd is not None:
        out["motd"] = motd.read_text(encoding="utf-8").strip()
    return out


@task(deps=[settings], outputs=["build/service.*"])
def config(settings: dict[str, str], fmt: Literal["toml", "env"] = "toml") -> File:
    """Write the settings as build/service.toml or build/service.env."""
    if fmt == "toml":
        lines = ["[service]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    else:
        lines = [f"SERVICE_{k.upper()}={json.dumps(v)}" for k, v in settings.items()]
    out = File(f"build/service.{fmt}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
