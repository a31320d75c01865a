"""The evaluation table in the terminal."""

from __future__ import annotations


def fmt(m: dict, spec: str) -> str:
    if m.get("lo") is None:
        return format(m["value"], spec)
    return f"{format(m['value'], spec)} [{format(m['lo'], spec)}, {format(m['hi'], spec)}]"


def print_eval_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from rlhfkit.metric_names import ENDINGS, EVAL_KEYS, METRICS

    ref, pol = result["models"]["reference"], result["models"]["policy"]
    table = Table(title=f"eval: {result['n_completions']} completions of {result['n_prompts']} held-out prompts (95% bootstrap intervals)")
    for col in ["metric", "reference", "policy", "Δ"]:
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key in EVAL_KEYS:
        m = METRICS[f"eval/{key}"]
        spec = ".2f" if m.percent else "+.3f" if key in ("reward_model", "gold") else ".3f"
        if key in ref:
            table.add_row(m.label, fmt(ref[key], spec), fmt(pol[key], spec), format(pol[key]["value"] - ref[key]["value"], "+" + spec.lstrip("+")))
    for key, m in result["win_rate"].items():
        table.add_row(f"win rate of policy ({key})", "", fmt(m, ".2f"), "")
    for case in ("both_ended", "only_policy_ended"):
        label, entry = ENDINGS[case][2], result.get("gold_win_by_ending", {}).get(case, {})
        if entry.get("n"):  # where the gold win comes from: finished replies, or better ones
            table.add_row(f"  gold win where {label}", "", fmt(entry["gold_win_rate"], ".2f"), f"{entry['n']} pairs")
    table.add_row("KL(policy ‖ reference), nats", "", fmt(result["kl"], ".2f"), f"budget {result['kl_budget']:g}")
    console = Console()
    console.print(table)
    from rich.text import Text

    v = result["verdict"]
    console.print(Text("verdict: " + v["sentence"], style="green" if v["passed"] else "red"))
