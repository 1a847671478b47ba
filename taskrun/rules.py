"""Failure rules as pure functions: trigger rules, ``when=`` conditions, retry policy.

The scheduler asks these and acts; nothing here touches a cache, an executor or a clock,
so each rule is tested on its own (``tests/test_rules.py``) and the scheduler's property
test compares a whole run against the same few lines written again as a reference model.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RUN_IF",
    "RetryPolicy",
    "Verdict",
    "decide",
    "evaluate_when",
    "when_parameters",
]

RUN_IF: tuple[str, ...] = ("succeeded", "failed", "always")


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a task whose upstreams have all ended runs, and if not, why."""

    run: bool
    reason: str = ""


def decide(rule: str, upstream: Sequence[tuple[str, str]]) -> Verdict:
    """The verdict of trigger ``rule`` over ``(task, state)`` of each direct upstream.

    - ``succeeded``: every upstream ran or was cached.
    - ``failed``: at least one upstream failed (a rescue; cancelled or skipped is not failed).
    - ``always``: whatever happened upstream (a cleanup, a ``finally``).
    """
    if rule == "always":
        return Verdict(True)
    if rule == "failed":
        if any(state == "failed" for _, state in upstream):
            return Verdict(True)
        return Verdict(False, "no upstream failed (run_if='failed')")
    for task, state in upstream:
        if state == "failed":
            return Verdict(False, f"upstream '{task}' failed")
        if state == "skipped":
            return Verdict(False, f"upstream '{task}' was skipped")
        if state == "cancelled":
            return Verdict(False, f"upstream '{task}' was cancelled")
    return Verdict(True)


def when_parameters(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The parameter names of a ``when=`` callable (each must be an option of the task)."""
    return tuple(inspect.signature(fn).parameters)


def evaluate_when(fn: Callable[..., Any], options: Mapping[str, Any]) -> tuple[bool, str]:
    """Call ``when=`` with the options it names; ``(go, reason to skip)``.

    Raises whatever the callable raises (the invocation turns it into a problem).
    """
    names = when_parameters(fn)
    value = fn(**{n: options[n] for n in names})
    if value:
        return True, ""
    shown = ", ".join(f"{n}={options[n]!r}" for n in names)
    return False, f"when= is false ({shown})" if shown else "when= is false"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and after how long a failed task is tried again.

    The wait before attempt ``n + 1`` (after ``n`` failures) is
    ``delay * backoff ** (n - 1)``, stretched by a random factor in ``[1 - jitter,
    1 + jitter]``. ``on`` names the exception types worth a retry (empty: any failure).
    """

    retries: int = 0
    delay: float = 0.0
    backoff: float = 1.0
    jitter: float = 0.0
    on: tuple[type[BaseException], ...] = ()

    def allows(self, failures: int, error_types: Sequence[str], *, timed_out: bool) -> bool:
        """May the task run again after its ``failures``-th failed attempt?"""
        if failures > self.retries:
            return False
        if not self.on:
            return True
        names = set(error_types)
        if timed_out:
            names.add("TimeoutError")
        return any(_qualified(cls) in names for cls in self.on)

    def wait(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt, after ``failures`` failed attempts."""
        base = self.delay * self.backoff ** max(0, failures - 1)
        if self.jitter and base:
            base *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base)


def _qualified(cls: type[BaseException]) -> str:
    module = getattr(cls, "__module__", "")
    name = cls.__qualname__
    return name if module in ("builtins", "", None) else f"{module}.{name}"


def exception_names(exc: BaseException) -> tuple[str, ...]:
    """The qualified names of ``exc``'s classes, its own first (what ``retry_on`` matches)."""
    return tuple(_qualified(cls) for cls in type(exc).__mro__ if issubclass(cls, BaseException))


# -- definition-time checks (the registry calls these while it builds a TaskSpec) -----------

FAILURE_SETTINGS: tuple[str, ...] = (
    "run_if",
    "when",
    "retry_delay",
    "retry_backoff",
    "retry_jitter",
    "retry_on",
    "executor",
)
EXECUTORS: tuple[str, ...] = ("inline", "thread", "process", "dask")


def read_failure_settings(kwargs: Mapping[str, Any], label: str) -> dict[str, Any]:
    """Check ``run_if=``, ``when=``, the retry policy and ``executor=`` of one ``@task``."""
    from taskrun.errors import DefinitionError, did_you_mean

    out: dict[str, Any] = {}
    rule = kwargs.get("run_if", "succeeded")
    if rule not in RUN_IF:
        hint = did_you_mean(str(rule), RUN_IF)
        raise DefinitionError(
            f"{label}: run_if={rule!r} is not a trigger rule{hint}; use one of"
            f" {', '.join(repr(r) for r in RUN_IF)}"
        )
    out["run_if"] = rule
    when = kwargs.get("when")
    if when is not None and not callable(when):
        raise DefinitionError(
            f"{label}: when= must be a function of the task's options (got {when!r});"
            " write e.g. when=lambda target: target == 'prod'"
        )
    out["when"] = when

    def number(key: str, default: float, low: float, high: float | None = None) -> float:
        value = kwargs.get(key, default)
        bad = isinstance(value, bool) or not isinstance(value, (int, float))
        if bad or value < low or (high is not None and value > high):
            bounds = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
            raise DefinitionError(f"{label}: {key}= must be a number {bounds} (got {value!r})")
        return float(value)

    out["retry_delay"] = number("retry_delay", 0.0, 0.0)
    out["retry_backoff"] = number("retry_backoff", 1.0, 1.0)
    out["retry_jitter"] = number("retry_jitter", 0.0, 0.0, 1.0)
    on = kwargs.get("retry_on", ())
    if isinstance(on, type):
        on = (on,)
    if not isinstance(on, (list, tuple)) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in on
    ):
        raise DefinitionError(
            f"{label}: retry_on= must be exception classes (got {on!r});"
            " write e.g. retry_on=(ConnectionError, TimeoutError)"
        )
    out["retry_on"] = tuple(on)
    retries = kwargs.get("retries", 0)
    if (out["retry_on"] or kwargs.get("retry_delay")) and not retries:
        raise DefinitionError(
            f"{label}: retry_on= and retry_delay= only matter with retries=; add e.g. retries=3"
        )
    executor = kwargs.get("executor")
    if executor is not None and executor not in EXECUTORS:
        hint = did_you_mean(str(executor), EXECUTORS)
        raise DefinitionError(
            f"{label}: executor={executor!r} is not an executor{hint}; use one of"
            f" {', '.join(EXECUTORS)}"
        )
    out["executor"] = executor
    return out


def check_when(when: Callable[..., Any], options: Sequence[str], label: str) -> None:
    """``when=`` may only name options of its own task (it is decided before anything runs)."""
    from taskrun.errors import DefinitionError, did_you_mean

    try:
        names = when_parameters(when)
    except (TypeError, ValueError) as exc:
        raise DefinitionError(f"{label}: when= has no readable signature ({exc})") from None
    for name in names:
        if name not in options:
            hint = did_you_mean(name, options)
            known = ", ".join(options) if options else "none"
            raise DefinitionError(
                f"{label}: when= takes parameter '{name}', which is not an option of the"
                f" task{hint}; when= is decided from the task's own options (it has: {known})"
            )
