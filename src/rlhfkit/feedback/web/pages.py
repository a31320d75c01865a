"""The Jinja2 environment every page renders through: autoescaped, with a few number filters."""

from __future__ import annotations

from pathlib import Path

import jinja2
from fastapi import Request
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup

HERE = Path(__file__).parent

# Prompts and completions are untrusted text: autoescape everything, always (not only *.html).
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
)
# The guideline is markdown; raw HTML in it is escaped, not passed through, and markdown-it refuses
# javascript: links by default.
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt: str = ".3f") -> str:
    return "—" if x is None else format(x, fmt)


templates.env.filters.update(pct=_pct, num=_num, markdown=lambda text: Markup(_markdown.render(text)))


def render(request: Request, template: str, status_code: int = 200, **context):
    return templates.TemplateResponse(request, template, {"s": None, **context}, status_code=status_code)
