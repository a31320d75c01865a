"""Numbers for a reader (the report's Jinja filters, the verdict's sentences, the terminal table)."""

from __future__ import annotations

import math
from typing import Any




def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_num(x: Any) -> str:
    """A number for a reader: 3 decimals near 1, fewer for large values, '—' for missing/NaN, and
    a true minus sign (U+2212), as in the Δ column."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return ("−" if x < 0 else "") + f"{abs(x):,}"
    if not finite(x):
        return "—" if x is None or isinstance(x, (int, float)) else str(x)
    a = abs(x)
    if a >= 1000:
        text = f"{a:,.0f}"
    elif a >= 100:
        text = f"{a:.1f}"
    elif a >= 10:
        text = f"{a:.2f}"
    elif a >= 0.001 or a == 0:
        text = f"{a:.3f}"
    else:
        text = f"{a:.2e}"
    return ("−" if x < 0 and text.strip("0.,e+-") else "") + text


def fmt_pct(x: Any) -> str:
    if not finite(x):
        return "—"
    text = f"{abs(100 * x):.1f}%"
    return ("−" if x < 0 and text != "0.0%" else "") + text


def fmt_signed(x: Any, pct: bool = False) -> str:
    if not finite(x):
        return "—"
    text = fmt_pct(abs(x)) if pct else fmt_num(abs(x))
    return ("+" if x > 0 else "−" if x < 0 else "±") + text


def fmt_interval(stat: Any, pct: bool = False) -> str:
    """'0.412 [0.301, 0.522]' from {"value", "lo", "hi"}; the bracket only when both ends exist."""
    if not isinstance(stat, dict):
        return fmt_pct(stat) if pct else fmt_num(stat)
    f = fmt_pct if pct else fmt_num
    text = f(stat.get("value"))
    if finite(stat.get("lo")) and finite(stat.get("hi")):
        text += f" [{f(stat['lo'])}, {f(stat['hi'])}]"
    return text


def as_dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def value(stat: Any) -> float | None:
    v = stat.get("value") if isinstance(stat, dict) else stat
    return float(v) if finite(v) else None


def fmt_setting(x: Any) -> str:
    """A configured value as written ('0.7', '25'), not rounded like a measurement."""
    return f"{x:g}" if finite(x) else str(x)
