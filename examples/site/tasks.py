"""A static site from Markdown files: files in, files out, rebuilt only where they changed.

    sources ──> toc ──────────────┐
       └──each──> page[...] ──────┼──> site
    assets ───────────────────────┘

`sources` finds the Markdown files in content/ when the task runs; `page` is mapped over
them (`map=`): one call per file, each cached on its own, so an edit reruns that page only
and a new file is one new call. `toc` reads every page for its title; when an edit leaves
the titles alone, its product is unchanged and the other pages stay cached (early
cutoff). The Markdown converter is the small one below: no dependency beyond the standard
library.
"""

from __future__ import annotations

import html
import re
import shutil
import string
from pathlib import Path

from taskrun import Dir, File, task

TEMPLATE = "templates/page.html"
OUT = "build/site"


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
@task
def sources(content: Dir = Dir("content")) -> list[File]:
    """The Markdown pages in CONTENT, the home page (index) first."""
    return sorted(content.glob("*.md"), key=lambda p: (p.stem != "index", p.stem))


@task(deps=[sources])
def toc(sources: list[File]) -> dict[str, str]:
    """The title of every page, for the navigation bar."""
    return {path.stem: title_of(path.read_text(encoding="utf-8"), path.stem) for path in sources}


@task(map={"source": sources}, deps=[toc], inputs=[TEMPLATE], outputs=[OUT + "/{source.stem}.html"])
def page(source: File, toc: dict[str, str]) -> File:
    """Render one Markdown page into build/site/<name>.html (one call per page)."""
    template = string.Template(Path(TEMPLATE).read_text(encoding="utf-8"))
    nav = " ".join(f'<a href="{name}.html">{html.escape(title)}</a>' for name, title in toc.items())
    text = template.substitute(
        title=html.escape(toc.get(source.stem, source.stem)),
        nav=nav,
        body=markdown_to_html(source.read_text(encoding="utf-8")).rstrip(),
    )
    target = File(f"{OUT}/{source.stem}.html")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return target


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


@task(deps=[toc, assets, page], outputs=[f"{OUT}/sitemap.txt"])
def site(
    toc: dict[str, str],
    assets: list[File],
    page: list[File],
    base_url: str = "https://example.org/",
) -> list[str]:
    """Check the links between pages and write build/site/sitemap.txt."""
    built = {p.name for p in Path(OUT).rglob("*") if p.is_file()}
    links = 0
    for path in page:
        for href in re.findall(r'href="([^":#]+)"', path.read_text(encoding="utf-8")):
            links += 1
            if Path(href).name not in built:
                raise ValueError(f"{path.name} links to {href}, which is not in the site")
    urls = [base_url + path.name for path in page]
    Path(OUT, "sitemap.txt").write_text("\n".join(urls) + "\n", encoding="utf-8")
    print(f"checked {links} links in {len(page)} pages")
    return urls
