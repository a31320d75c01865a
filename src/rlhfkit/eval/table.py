"""The evaluation table in the terminal."""

from __future__ import annotations

ROWS = [
    ("reward_model", "reward-model score (normalised)", "+.3f"),
    ("gold", "gold score (independent judge)", "+.3f"),
    ("toxicity", "toxicity: mean P(offensive)", ".3f"),
    ("toxic_share", "share with P(offensive) > 0.5", ".3f"),
    ("length", "length (tokens)", ".1f"),
    ("ended", "share ending with EOS", ".2f"),
    ("distinct_1", "distinct-1", ".3f"),
    ("distinct_2", "distinct-2", ".3f"),
    ("repetition", "repetition (repeated 3-grams)", ".3f"),
]


def fmt(m: dict, spec: str) -> str:
    if m.get("lo") is None:
        return format(m["value"], spec)
    return f"{format(m['value'], spec)} [{format(m['lo'], spec)}, {format(m['hi'], spec)}]"


def print_eval_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    ref, pol = result["models"]["reference"], result["models"]["policy"]
    table = Table(title=f"eval: {result['n_completions']} completions of {result['n_prompts']} held-out prompts (95% bootstrap intervals)")
    for col in ["metric", "reference", "policy", "Δ"]:
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, label, spec in ROWS:
        if key in ref:
            table.add_row(label, fmt(ref[key], spec), fmt(pol[key], spec), format(pol[key]["value"] - ref[key]["value"], "+" + spec.lstrip("+")))
    for key, m in result["win_rate"].items():
        table.add_row(f"win rate of policy ({key})", "", fmt(m, ".2f"), "")
    table.add_row("KL(policy ‖ reference), nats", "", fmt(result["kl"], ".2f"), f"budget {result['kl_budget']:g}")
    console = Console()
    console.print(table)
    from rich.text import Text

    v = result["verdict"]
    console.print(Text("verdict: " + v["sentence"], style="green" if v["passed"] else "red"))
