"""``taskrun cache ...``: inspect and maintain the cache (info, gc, clear, verify, export, import)."""

from __future__ import annotations

import click

__all__ = ["cache_group"]


@click.group("cache")
def cache_group() -> None:
    """Inspect and maintain the result cache."""
