"""Streaming: a crawler discovers pages while a mapped task already analyses them.

    crawl ──each──> analyse[...] ──> report

`crawl` is a generator task: it follows the `-> page.txt` links from pages/index.txt and
yields each page it finds, slowly (`delay` stands for the network). `analyse` is mapped over
it (`map=[crawl]`), so each page's call starts as soon as the page is yielded, while the
crawl goes on, up to -j calls at once. Every page's analysis is cached on its own: edit one
page and only that page is analysed again.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from taskrun import File, task

WORD = re.compile(r"[a-z]+")


def links(text: str) -> list[str]:
    """The pages a page links to: its `-> name.txt` lines."""
    return re.findall(r"^->\s*(\S+)\s*$", text, re.M)


@task(inputs=["pages/*.txt"])
def crawl(start: File = File("pages/index.txt"), delay: float = 0.2) -> Iterator[File]:
    """Every page reachable from START, breadth first, as it is found."""
    seen = {start}
    queue = [start]
    while queue:
        page = queue.pop(0)
        time.sleep(delay)  # fetching a page takes a while
        print(f"found {page}")
        yield page
        for name in links(page.read_text(encoding="utf-8")):
            linked = File(page.parent / name)
            if linked not in seen and linked.is_file():
                seen.add(linked)
                queue.append(linked)


@task(map={"page": crawl})
def analyse(page: File, slow: float = 0.3) -> dict[str, int]:
    """The words of one page, counted (SLOW stands for real work)."""
    time.sleep(slow)
    words = WORD.findall(page.read_text(encoding="utf-8").lower())
    return dict(Counter(w for w in words if len(w) > 3))


@task(deps=[crawl, analyse], outputs=["build/report.txt"])
def report(crawl: list[File], analyse: list[dict[str, int]], top: int = 5) -> File:
    """The TOP words over every page found, and the pages, into build/report.txt."""
    total: Counter[str] = Counter()
    for counts in analyse:
        total.update(counts)
    lines = [f"{len(crawl)} pages: " + ", ".join(p.name for p in crawl)]
    lines += [f"{word:<10} {n}" for word, n in total.most_common(top)]
    out = Path("build/report.txt")
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return File(out)
