"""A small data pipeline: download -> clean -> aggregate -> report.

`download` fetches a CSV through a URL. By default that URL points at the fixture shipped
in data/, so the example runs offline; `-o download.url=https://...` fetches a real one.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import urllib.request
from pathlib import Path
from typing import Literal

from taskrun import File, define_type, task

FIXTURE = "data/sales.csv"

PositiveInt = define_type("PositiveInt", int, lambda v: v > 0, doc="an integer above 0")

Row = dict[str, str]


@task(inputs=[FIXTURE])
def download(url: str | None = None) -> str:
    """Fetch the raw sales CSV (default: the fixture in data/, as a file:// URL)."""
    # The fixture is a declared input, so editing it reruns this task. A remote URL is
    # fingerprinted by its text only: use `taskrun run --force download` to refetch it.
    source = url or Path(FIXTURE).resolve().as_uri()
    with urllib.request.urlopen(source, timeout=30) as response:
        text: str = response.read().decode("utf-8")
    print(f"downloaded {len(text.splitlines()) - 1} rows from {url or FIXTURE}")
    return text


def parse_row(row: Row) -> Row | None:
    """A cleaned row, or None when it cannot be used (missing or negative numbers)."""
    try:
        units = int(row["units"])
        price = float(row["unit_price"])
    except (KeyError, ValueError):
        return None
    if units < 0 or price < 0:
        return None
    return {
        "date": row["date"].strip(),
        "month": row["date"].strip()[:7],
        "region": row["region"].strip().lower(),
        "product": row["product"].strip().lower(),
        "revenue": f"{units * price:.2f}",
    }


@task(deps=[download])
def clean(download: str) -> list[Row]:
    """Parse the CSV, normalise names, drop rows that cannot be used."""
    rows = [parse_row(r) for r in csv.DictReader(io.StringIO(download))]
    kept = [r for r in rows if r is not None]
    print(f"kept {len(kept)} rows, dropped {len(rows) - len(kept)}")
    return kept


@dataclasses.dataclass(frozen=True)
class Totals:
    """Revenue per group, and which regions sold anything (a set: order does not matter)."""

    by: str
    revenue: dict[str, float]
    regions: frozenset[str]


@task(deps=[clean])
def aggregate(clean: list[Row], by: Literal["region", "product", "month"] = "region") -> Totals:
    """Total revenue per region, product or month."""
    totals: dict[str, float] = {}
    for row in clean:
        totals[row[by]] = round(totals.get(row[by], 0.0) + float(row["revenue"]), 2)
    ranked = dict(sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])))
    return Totals(by, ranked, frozenset(row["region"] for row in clean))


@task(deps=[aggregate], outputs=["build/report.md"])
def report(aggregate: Totals, top: PositiveInt = 5, title: str = "Sales") -> File:
    """Write build/report.md: the TOP groups by revenue, as a Markdown table."""
    revenue = aggregate.revenue
    lines = [f"# {title}", "", f"| {aggregate.by} | revenue |", "|---|---:|"]
    lines += [f"| {name} | {total:.2f} |" for name, total in list(revenue.items())[:top]]
    lines += ["", f"Total: {sum(revenue.values()):.2f} over {len(revenue)} groups."]
    lines += [f"Regions with sales: {', '.join(sorted(aggregate.regions))}.", ""]
    out = File("build/report.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
