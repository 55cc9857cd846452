"""The project's own docs, for people and machines: ``/docs``, ``/docs/<page>.md``, ``/llms.txt``.

The pages are the repository's Markdown — ``README.md`` (as ``overview``)
and every ``docs/*.md`` — read from the wheel's packaged copy or, in a
checkout, from the repository itself. As the spec describes, every page
exists as raw Markdown at ``/docs/<page>.md``; ``/llms.txt`` indexes them
(llmstxt.org format) and ``/llms-full.txt`` is all of them in one file. The
HTML view shows the same Markdown as text: nothing in a page is ever
interpreted as HTML.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Final

import attrs
from aiohttp import web

from porten.adapters.http.portal._html import html, join
from porten.adapters.http.portal._layout import error_page, page
from porten.adapters.http.portal._web import secured

_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_MARKDOWN: Final = "text/markdown"


@attrs.frozen
class DocPage:
    """One Markdown page: its URL name, title (first heading) and text."""

    name: str
    title: str
    text: str

    @property
    def summary(self) -> str:
        """The first prose line, for the llms.txt index."""
        for line in self.text.splitlines():
            s = line.strip()
            if s and not s.startswith(("#", "```", ">", "|", "-", "<")):
                return s[:160]
        return ""


def docs_root() -> Path:
    """Where the Markdown lives: the packaged copy, else the repository checkout."""
    packaged = resources.files("porten") / "_docs"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[5]


def _title(text: str, fallback: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return fallback


def load_pages(root: Path) -> dict[str, DocPage]:
    """Every page under ``root`` (``README.md`` as ``overview``, ``docs/*.md`` by name)."""
    found: dict[str, Path] = {}
    if (root / "README.md").is_file():
        found["overview"] = root / "README.md"
    for path in sorted((root / "docs").glob("*.md")):
        name = path.stem.lower().replace("_", "-")
        if _NAME.match(name) and name not in found:
            found[name] = path
    pages = {}
    for name, path in found.items():
        text = path.read_text(encoding="utf-8")
        pages[name] = DocPage(name=name, title=_title(text, name), text=text)
    return pages


DOCS: Final = web.AppKey("porten_docs", dict)


def _pages(request: web.Request) -> dict[str, DocPage]:
    pages: dict[str, DocPage] = request.app[DOCS]
    return pages


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


@secured
async def index(request: web.Request) -> web.StreamResponse:
    """``/docs``: the list of pages, each with its Markdown link."""
    items = join(
        html('<li><a href="/docs/{name}">{title}</a> · <a href="/docs/{name}.md">'
             'Markdown</a></li>', name=p.name, title=p.title)
        for p in _pages(request).values()
    )
    body = html('<p>Every page is also raw Markdown (append <code>.md</code>); machines start '
                'at <a href="/llms.txt">/llms.txt</a>.</p><ul class="docs">{items}</ul>',
                items=items)
    return page(request, "Docs", body)


@secured
async def show(request: web.Request) -> web.StreamResponse:
    """``/docs/<page>`` (HTML) or ``/docs/<page>.md`` (the Markdown itself)."""
    name = request.match_info["page"]
    raw = name.endswith(".md")
    doc = _pages(request).get(name.removesuffix(".md"))
    if doc is None:
        return error_page(request, 404, f"There is no docs page called {name!r}.")
    if raw:
        return web.Response(text=doc.text, content_type=_MARKDOWN, charset="utf-8")
    body = html('<p><a href="/docs/{name}.md">Markdown source</a></p>'
                '<pre class="markdown">{text}</pre>', name=doc.name, text=doc.text)
    return page(request, doc.title, body)


@secured
async def llms_txt(request: web.Request) -> web.StreamResponse:
    """``/llms.txt``: an index of the docs for language models (llmstxt.org)."""
    base = _base(request)
    lines = [
        "# Porten", "",
        "> A self-hostable, OpenAI-compatible LLM inference hub in front of a fleet of GPU "
        "nodes; models load on demand.", "",
        "## Docs", "",
    ]
    lines += [f"- [{p.title}]({base}/docs/{p.name}.md): {p.summary}"
              for p in _pages(request).values()]
    lines += ["", "## Optional", "", f"- [Everything in one file]({base}/llms-full.txt)", ""]
    return web.Response(text="\n".join(lines), content_type="text/plain", charset="utf-8")


@secured
async def llms_full(request: web.Request) -> web.StreamResponse:
    """``/llms-full.txt``: every page, one after the other."""
    text = "\n\n---\n\n".join(p.text.rstrip() for p in _pages(request).values())
    return web.Response(text=text + "\n", content_type="text/plain", charset="utf-8")


def add_routes(app: web.Application, root: Path | None = None) -> None:
    """Mount the docs routes, reading the pages once."""
    app[DOCS] = load_pages(root or docs_root())
    app.router.add_get("/docs", index)
    app.router.add_get("/docs/{page}", show)
    app.router.add_get("/llms.txt", llms_txt)
    app.router.add_get("/llms-full.txt", llms_full)
