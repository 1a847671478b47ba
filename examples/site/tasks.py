"""A static site from Markdown files: files in, files out, rebuilt only where they changed.

    toc ──> page_index, page_about, page_building ──┐
    assets ─────────────────────────────────────────┴──> site

Each Markdown file in content/ becomes its own task, so an edit reruns that page only.
`toc` reads every page for its title; when an edit leaves the titles alone, its product is
unchanged and the other pages stay cached (early cutoff). The Markdown converter is the
small one below: no dependency beyond the standard library.
"""

from __future__ import annotations

import html
import re
import shutil
import string
from collections.abc import Callable
from pathlib import Path

from taskrun import Dir, File, task

CONTENT = "content"
TEMPLATE = "templates/page.html"
OUT = "build/site"
# Pages are found when the task file is loaded; a new .md file is a new task.
PAGES = sorted(
    (p.stem for p in (Path(__file__).parent / CONTENT).glob("*.md")),
    key=lambda stem: (stem != "index", stem),  # the home page first in the navigation
)


# -- a tiny Markdown converter -----------------------------------------------------------
def inline(text: str) -> str:
    """Escape TEXT and render `code`, **strong**, *emphasis* and [links](url)."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)


def markdown_to_html(text: str) -> str:
    """Headings, paragraphs, lists and fenced code blocks: enough for this site."""
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    code: list[str] | None = None

    def flush() -> None:
        if para:
            out.append(f"<p>{inline(' '.join(para))}</p>")
            para.clear()
        if items:
            out.append("<ul>\n" + "\n".join(f"<li>{inline(i)}</li>" for i in items) + "\n</ul>")
            items.clear()

    for line in text.splitlines():
        if code is not None:
            if line.startswith("```"):
                out.append("<pre><code>" + html.escape("\n".join(code)) + "</code></pre>")
                code = None
            else:
                code.append(line)
        elif line.startswith("```"):
            flush()
            code = []
        elif heading := re.match(r"(#{1,6})\s+(.*)", line):
            flush()
            level = len(heading[1])
            out.append(f"<h{level}>{inline(heading[2].strip())}</h{level}>")
        elif item := re.match(r"\s*[-*]\s+(.*)", line):
            if para:
                flush()
            items.append(item[1].strip())
        elif not line.strip():
            flush()
        else:
            para.append(line.strip())
    flush()
    return "\n".join(out) + "\n"


def title_of(text: str, fallback: str) -> str:
    """The first heading of a Markdown text."""
    match = re.search(r"^#{1,6}\s+(.*)$", text, re.M)
    return match[1].strip() if match else fallback


# -- tasks -------------------------------------------------------------------------------
@task(inputs=[f"{CONTENT}/*.md"])
def toc() -> dict[str, str]:
    """The title of every page, for the navigation bar."""
    paths = sorted(Path(CONTENT).glob("*.md"), key=lambda p: (p.stem != "index", p.stem))
    return {path.stem: title_of(path.read_text(encoding="utf-8"), path.stem) for path in paths}


def render_page(stem: str, toc: dict[str, str]) -> File:
    """Write build/site/STEM.html from content/STEM.md and the template."""
    source = Path(CONTENT) / f"{stem}.md"
    template = string.Template(Path(TEMPLATE).read_text(encoding="utf-8"))
    nav = " ".join(
        f'<a href="{name}.html">{html.escape(title)}</a>' for name, title in toc.items()
    )
    page = template.substitute(
        title=html.escape(toc.get(stem, stem)),
        nav=nav,
        body=markdown_to_html(source.read_text(encoding="utf-8")).rstrip(),
    )
    target = File(f"{OUT}/{stem}.html")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    print(f"wrote {target}")
    return target


def page_task(stem: str) -> Callable[..., File]:
    """Define the task that renders one page."""

    def page(toc: dict[str, str]) -> File:
        return render_page(stem, toc)

    page.__doc__ = f"Render {CONTENT}/{stem}.md into {OUT}/{stem}.html."  # for `taskrun list`
    return task(
        name=f"page_{stem.replace('-', '_')}",
        deps=[toc],
        inputs=[f"{CONTENT}/{stem}.md", TEMPLATE],
        outputs=[f"{OUT}/{stem}.html"],
    )(page)


pages = [page_task(stem) for stem in PAGES]


@task(outputs=[f"{OUT}/static/**"])
def assets(static: Dir = Dir("static")) -> list[File]:
    """Copy the STATIC directory (stylesheets, images) into the site."""
    copied = []
    for source in sorted(p for p in static.rglob("*") if p.is_file()):
        target = File(OUT) / "static" / source.relative_to(static)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copied.append(File(target))
    return copied


@task(deps=[toc, assets, *pages], outputs=[f"{OUT}/sitemap.txt"])
def site(
    toc: dict[str, str], assets: list[File], base_url: str = "https://example.org/"
) -> list[str]:
    """Check the links between pages and write build/site/sitemap.txt."""
    built = {p.name for p in Path(OUT).rglob("*") if p.is_file()}
    links = 0
    for stem in toc:
        text = Path(OUT, f"{stem}.html").read_text(encoding="utf-8")
        for href in re.findall(r'href="([^":#]+)"', text):
            links += 1
            if Path(href).name not in built:
                raise ValueError(f"{stem}.html links to {href}, which is not in the site")
    urls = [base_url + f"{stem}.html" for stem in toc]
    Path(OUT, "sitemap.txt").write_text("\n".join(urls) + "\n", encoding="utf-8")
    print(f"checked {links} links in {len(toc)} pages")
    return urls
