"""The Jinja2 environment every page renders through: autoescaped, invisible characters made visible,
and a few number filters; and the one way a refusal is answered (a page for a person, JSON for the API)."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup

HERE = Path(__file__).parent

# Control characters (but tab and newline) and the bidirectional-text controls: a prompt holding
# U+202E (right-to-left override) displays other text than what is stored and what the reward model
# reads (Boucher & Anderson 2021, "Trojan Source"). Shown as their code point instead.
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(value):
    """Every ``{{ … }}`` output passes here (Jinja's ``finalize``): text shows what it really holds."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return _INVISIBLE.sub(lambda m: f"[U+{ord(m.group()):04X}]", value)
    return value


# Prompts and completions are untrusted text: autoescape everything, always (not only *.html).
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined,
        finalize=visible,
    )  # fmt: skip
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


def error_response(request: Request, status: int, message: str, headers: dict | None = None):
    """JSON for the API, a page for a person; every refusal says why."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    page = "signed_out.html" if status == 401 else "error.html"
    response = render(request, page, status_code=status, message=message)
    response.headers.update(headers or {})
    return response
