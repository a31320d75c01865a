"""Terminal rendering of the feedback agreement report (the HTML report renders the same dict)."""

from __future__ import annotations


FEW_RANKINGS = 20
"""Below this many rankings a labeler's agreement and quality score move by chance (±10 points or more)."""


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt: str = ".3f") -> str:
    return "—" if x is None else format(x, fmt)


def careful_agreement(report: dict) -> float | None:
    """Pooled pairwise agreement among labelers who are not flagged (the literature's scale)."""
    flagged = {row["labeler"] for row in report["labelers"] if row["flagged"]}
    agree = total = 0
    for row in report["pairwise_table"]:
        if not flagged.intersection(row["labelers"]):
            agree += row["agree"]
            total += row["total"]
    return agree / total if total else None


def print_feedback_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    console.print(
        f"{report['n_rankings']} rankings of {report['n_tasks']} tasks by {report['n_labelers']} labelers "
        f"({report['n_overlap_tasks']} tasks ranked by ≥ 2)"
    )
    console.print(
        f"pairwise agreement {_pct(report['pairwise_agreement'])} (all labelers), "
        f"{_pct(careful_agreement(report))} (labelers not flagged; InstructGPT reports ~73%)   "
        f"Kendall τ-b {_num(report['kendall_tau_b_mean'])}   Krippendorff α (ordinal) {_num(report['krippendorff_alpha_ordinal'])}"
    )
    table = Table(title="labelers")
    # two-line headers and a labeler column as wide as its names: at 80 columns nothing is cut to "label…"
    names = max([len("labeler")] + [len(row["labeler"]) for row in report["labelers"]])
    for col in ["labeler", "rankings", "agree w/\nconsensus", "position\nbias", "F rate", "tie rate", "gold\nacc.",
                "quality", "flag"]:
        table.add_column(col, justify="left" if col in ("labeler", "flag") else "right",
                         min_width=names if col == "labeler" else max(len(w) for w in col.split("\n")))
    for row in report["labelers"]:
        table.add_row(
            Text(row["labeler"]), str(row["n_rankings"]), _pct(row["consensus_agreement"]),
            _num(row["position_bias"], "+.2f"), _pct(row["f_rate"]), _pct(row["tie_rate"]),
            _pct(row["gold_accuracy"]), _num(row["score"], ".2f"),
            Text("; ".join(row["reasons"]), style="bold red") if row["flagged"] else Text("ok", style="green"),
        )
    console.print(table)
    fewest = min((row["n_rankings"] for row in report["labelers"]), default=0)
    if report["labelers"] and fewest < FEW_RANKINGS:
        console.print(f"note: quality scores and flags from fewer than {FEW_RANKINGS} rankings per labeler (fewest: "
                      f"{fewest}) are rough: a careful labeler may look careless by chance")
