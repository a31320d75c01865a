"""The report's plots: matplotlib's Figure directly (no pyplot global state, no GUI backend), each
returned as a PNG ``data:`` URI with its display width, so the page stays one self-contained file."""

from __future__ import annotations

import base64
import io
import math

from rlhfkit.eval.fmt import finite, fmt_num, value

REFERENCE_COLOUR = "#9ca3af"
POLICY_COLOUR = "#2563eb"
TRAIN_COLOUR = "#93c5fd"

# Figures are drawn at 2 pixels per CSS pixel (96 CSS px per inch) and shown at half their pixel
# width, so text stays sharp on high-density screens and at the browser's zoom.
CSS_DPI = 96
PIXEL_RATIO = 2


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=CSS_DPI * PIXEL_RATIO)


def _style(ax, title: str, xlabel: str = "", integer_x: bool = False) -> None:
    ax.set_title(title, fontsize=10, loc="left", color="#111827")
    ax.tick_params(labelsize=8, colors="#4b5563")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#d1d5db")
    ax.grid(True, color="#f3f4f6", linewidth=0.8)
    ax.set_axisbelow(True)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=8, color="#4b5563")
    if integer_x:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def png_image(fig) -> dict:
    """{"src": a data: URI of the figure as PNG, "width": its display width in CSS pixels}."""
    buf = io.BytesIO()
    # Software=None: the PNG then carries no version string, so the same run gives the same bytes.
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white", metadata={"Software": None})
    png = buf.getvalue()
    width = int.from_bytes(png[16:20], "big")  # IHDR: the width follows the 8-byte signature and chunk header
    return {"src": "data:image/png;base64," + base64.b64encode(png).decode("ascii"), "width": width // PIXEL_RATIO}


def curves_plot(panels: list[tuple[str, list[tuple[str, list[tuple[int, float]], str]], float | None]],
                xlabel: str) -> dict:
    """A grid of small line plots: panels = [(title, [(label, [(step, value)], colour)], hline)]."""
    n = len(panels)
    ncols = 1 if n == 1 else 2 if n in (2, 4) else 3
    nrows = math.ceil(n / ncols)
    fig = _figure(3.3 * ncols, 2.3 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_visible(False)
            continue
        title, series, hline = panels[i]
        for label, points, colour in series:
            xs = [s for s, _ in points]
            ys = [v for _, v in points]
            ax.plot(xs, ys, color=colour, linewidth=1.8, marker="o" if len(xs) <= 30 else None, markersize=3,
                    label=label)
        top = max((v for _, points, _ in series for _, v in points if math.isfinite(v)), default=0.0)
        if hline is not None and top >= 0.5 * hline:
            ax.axhline(hline, color="#dc2626", linestyle="--", linewidth=1, label="budget")
        elif hline is not None:  # far under budget: a line at the budget would flatten the curve
            title = f"{title} · budget {hline:g}"
        if len(series) > 1 or (hline is not None and top >= 0.5 * hline):
            ax.legend(fontsize=7, frameon=False)
        _style(ax, title, xlabel, integer_x=True)
    fig.tight_layout()
    return png_image(fig)


def toxicity_hist_plot(ref: list[float], pol: list[float]) -> dict:
    import numpy as np

    fig = _figure(6.6, 2.6)
    ax = fig.subplots()
    bins = np.linspace(0.0, 1.0, 21)
    ax.hist([ref, pol], bins=bins, color=[REFERENCE_COLOUR, POLICY_COLOUR],
            label=[f"reference (mean {fmt_num(float(np.mean(ref)))})", f"policy (mean {fmt_num(float(np.mean(pol)))})"])
    ax.axvline(0.5, color="#dc2626", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, frameon=False)
    ax.set_ylabel("completions", fontsize=8, color="#4b5563")
    _style(ax, "P(offensive) per completion", "P(offensive); dashed line = 0.5, the 'toxic' threshold")
    fig.tight_layout()
    return png_image(fig)


def toxicity_bar_plot(ref: dict, pol: dict) -> dict:
    fig = _figure(4.0, 2.6)
    ax = fig.subplots()
    for x, (name, stat, colour) in enumerate((("reference", ref, REFERENCE_COLOUR), ("policy", pol, POLICY_COLOUR))):
        v = value(stat) or 0.0
        err = None
        if isinstance(stat, dict) and finite(stat.get("lo")) and finite(stat.get("hi")):
            err = [[max(0.0, v - stat["lo"])], [max(0.0, stat["hi"] - v)]]
        ax.bar([x], [v], color=colour, width=0.6, yerr=err, capsize=6, ecolor="#374151")
    ax.set_xticks([0, 1], ["reference", "policy"])
    _style(ax, "Mean P(offensive) with 95% interval")
    fig.tight_layout()
    return png_image(fig)


def reliability_plot(bins: list[dict]) -> dict:
    fig = _figure(3.6, 3.2)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#9ca3af", linestyle="--", linewidth=1, label="perfect calibration")
    pts = [(b["mean_prob"], b["accuracy"], b.get("count") or 0) for b in bins
           if finite(b.get("mean_prob")) and finite(b.get("accuracy")) and (b.get("count") or 0) > 0]
    if pts:
        biggest = max(c for *_, c in pts) or 1
        ax.plot([p for p, _, _ in pts], [a for _, a, _ in pts], color=POLICY_COLOUR, linewidth=1.5)
        ax.scatter([p for p, _, _ in pts], [a for _, a, _ in pts], s=[12 + 80 * c / biggest for *_, c in pts],
                   color=POLICY_COLOUR, zorder=3, label="reward model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed share preferred", fontsize=8, color="#4b5563")
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    _style(ax, "Reliability diagram", "predicted P(preferred)")
    fig.tight_layout()
    return png_image(fig)
