"""``taskrun explain`` for people and machines: each task, hit or run, and what changed.

A view like the reporters in :mod:`taskrun.report` (and the HTML report in
:mod:`taskrun.report_html`): it renders the data :meth:`taskrun.scheduler.Scheduler.explain`
returns (:class:`~taskrun.scheduler.ExplainItem`, each with its fingerprint changes) and
decides nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from taskrun.report import _reasons, printable

__all__ = ["change_text", "explain_json", "explain_lines"]


# -- explain -------------------------------------------------------------------------------
_WILL_RUN = "(will run)"  # what Scheduler.explain() puts for a product not known yet
_SHOWS_VALUES = ("option", "runtime", "scheme", "task")


def _short(value: Any) -> str:
    """A component value for people: digests cut to 12 hex digits, absent as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, Mapping) and "repr" in value:  # an option: {"repr", "digest"}
        return str(value["repr"])
    text = str(value)
    if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
        return text[:12]
    return text


def change_text(change: Any) -> str:
    """One fingerprint change with its values: ``input 'a.txt' changed: 3f.. -> 9c..``."""
    text = str(change)
    if change.kind == "upstream" and change.new == _WILL_RUN:
        return (
            f"upstream '{change.name}' runs first, so its product is not known yet"
            f" (was {_short(change.old)})"
        )
    if change.kind in _SHOWS_VALUES or (change.kind == "code" and "version" in text):
        return text
    return f"{text}: {_short(change.old)} -> {_short(change.new)}"


def explain_lines(items: Any, warnings: Sequence[str] = ()) -> list[str]:
    """``taskrun explain`` as text: the cache's WARNINGS first, then each task, hit or run,
    and what changed, value by value."""
    out: list[str] = [f"warning  {message}" for message in warnings]
    for item in items:
        changes = [change_text(c) for c in item.changes]
        if item.action == "mapped":
            out.append(f"{item.task}: mapped: {_reasons(item.reasons)}")
            continue
        if item.action == "cached":
            if item.latest and item.latest != item.fingerprint and changes:
                out.append(
                    f"{item.task}: cached (another entry than the one it last used, which differs:)"
                )
                out += [f"  - {c}" for c in changes]
            else:
                out.append(f"{item.task}: cached")
            continue
        if item.action == "skip":
            out.append(f"{item.task}: would be skipped")
            out += [f"  - {r}" for r in item.reasons]
            continue
        out.append(f"{item.task}: would run")
        if item.latest is None:
            out += [f"  - {r}" for r in item.reasons]
            if item.reasons == ("no entry",):
                out[-1] = "  - no entry: nothing recorded for this task yet"
            continue
        shown = changes or list(item.reasons)
        extra = [r for r in item.reasons if r in ("forced",) or r.startswith("not cached")]
        out += [f"  - {c}" for c in extra + shown]
    cached = sum(1 for i in items if i.action == "cached")
    skip = sum(1 for i in items if i.action == "skip")
    total = sum(1 for i in items if i.action != "mapped")
    skips = f", {skip} would be skipped" if skip else ""
    out.append(
        f"{total} task{'s' if total != 1 else ''}: {cached} cached,"
        f" {total - cached - skip} would run{skips}"
        " (compared with the entry each task last used)"
    )
    return [printable(line) for line in out]


def explain_json(items: Any, warnings: Sequence[str] = ()) -> dict[str, Any]:
    """``taskrun explain --json``: every task with its changes as kind, name, old, new, and
    the cache's WARNINGS."""
    tasks = [
        {
            "task": item.task,
            "action": item.action,
            "fingerprint": item.fingerprint,
            "latest": item.latest,
            "reasons": list(item.reasons),
            "changes": [
                {"kind": c.kind, "name": c.name, "old": c.old, "new": c.new, "text": change_text(c)}
                for c in item.changes
            ],
        }
        for item in items
    ]
    cached = sum(1 for t in tasks if t["action"] == "cached")
    skip = sum(1 for t in tasks if t["action"] == "skip")
    run = sum(1 for t in tasks if t["action"] == "run")
    return {"tasks": tasks, "cached": cached, "run": run, "skip": skip, "warnings": list(warnings)}
