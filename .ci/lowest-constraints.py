"""Print pip constraints that pin every declared dependency to its lowest allowed version.

pip has no "lowest" resolution, so CI installs with these constraints (``pip install -c``)
to check that the floors in pyproject.toml are true: for each requirement of the project
and of the extras named on the command line (followed through ``taskrun[...]``), a
``>=X`` (or ``~=X``, ``==X``) floor becomes ``name==X``, its environment marker kept.
Extras of a requirement (``dask[distributed]``) are dropped: constraints cannot carry them.

    python3 .ci/lowest-constraints.py test dask > lowest.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$")
_FLOOR = re.compile(r"(?:>=|~=|==)\s*([0-9][^,\s]*)")


def main(extras: list[str]) -> int:
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    requirements = list(project.get("dependencies", []))
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        if extra not in optional:
            print(f"no extra {extra!r} in pyproject.toml", file=sys.stderr)
            return 2
        seen.add(extra)
        for req in optional[extra]:
            match = _REQ.match(req)
            if match and match.group(1) == name:  # taskrun[remote]: follow it
                todo += [e.strip() for e in (match.group(2) or "[]")[1:-1].split(",") if e]
            else:
                requirements.append(req)
    pins: dict[str, str] = {}
    for req in requirements:
        match = _REQ.match(req)
        if match is None:
            print(f"cannot read the requirement {req!r}", file=sys.stderr)
            return 2
        package, _, spec, marker = match.groups()
        floor = _FLOOR.search(spec)
        if floor is None:
            continue  # no lower bound declared: nothing to pin
        line = f"{package}=={floor.group(1)}" + (f" {marker}" if marker else "")
        pins.setdefault(package.lower(), line)
    for key in sorted(pins):
        print(pins[key])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
