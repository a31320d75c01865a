"""report.html: every section from hand-written artifacts, untrusted text escaped, nothing fetched,
and a missing artifact says "not run" instead of failing."""

from __future__ import annotations

import base64
import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rlhfkit.eval.fmt import fmt_interval, fmt_num, fmt_signed
from rlhfkit.eval.report import agreement_matrix, eval_rows, what_was_done, write_report
from rlhfkit.eval.verdict import judge

SECTIONS = ["summary", "ppo", "feedback", "reward-model", "eval", "samples"]
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(1)>"
EVIL_LABELER = "<b>mallory</b>"


def stat(value, lo=None, hi=None) -> dict:
    return {"value": value, "lo": lo, "hi": hi}


def eval_json() -> dict:
    return {
        "n_prompts": 24,
        "models": {
            "reference": {"reward_model": stat(-0.125, -0.25, 0.0), "gold": stat(0.25, 0.125, 0.375),
                          "toxicity": stat(0.0625, 0.03125, 0.09375), "toxic_share": stat(0.125, 0.0, 0.25),
                          "length": stat(31.5, 28.0, 35.0), "distinct_1": stat(0.5), "distinct_2": stat(0.75),
                          "repetition": stat(0.0625), "ended": stat(0.75, 0.625, 0.875)},
            "policy": {"reward_model": stat(0.875, 0.625, 1.125), "gold": stat(0.625, 0.5, 0.75),
                       "toxicity": stat(0.046875, 0.015625, 0.078125), "toxic_share": stat(0.0625, 0.0, 0.125),
                       "length": stat(27.25, 24.0, 30.5), "distinct_1": stat(0.4375), "distinct_2": stat(0.6875),
                       "repetition": stat(0.09375), "ended": stat(0.9375, 0.875, 1.0)},
        },
        "win_rate": {"reward_model": stat(0.6875, 0.5625, 0.8125), "gold": stat(0.625, 0.5625, 0.75)},
        "toxicity_where_it_lives": {"categories": ["provocative", "redteam"], "n": 16, "prompts": 8,
                                    "reference": stat(0.125), "policy": stat(0.0625),
                                    "difference": stat(-0.0625, -0.125, -0.015625)},
        "kl": stat(3.25, 2.5, 4.0),
        "kl_budget": 25.0,
        "gold_win_by_ending": {"both_ended": {"n": 10, "gold_win_rate": stat(0.45, 0.25, 0.65)},
                               "only_policy_ended": {"n": 4, "gold_win_rate": stat(1.0, 1.0, 1.0)},
                               "only_reference_ended": {"n": 0}, "neither_ended": {"n": 2, "gold_win_rate": stat(0.5)}},
        # written by the eval stage too; the report shows the verdict as judged and the rest as settings
        "kl_k1": stat(3.0, 2.0, 4.0), "samples_per_prompt": 1,
    }


def judged(ev: dict) -> dict:
    return {**ev, "verdict": judge(ev)}


def feedback_json() -> dict:
    names = ["alice", "bob", EVIL_LABELER]
    return {
        "n_rankings": 36, "n_tasks": 12, "n_labelers": 3, "n_overlap_tasks": 12,
        "pairwise_agreement": 0.6, "kendall_tau_b_mean": 0.4, "krippendorff_alpha_ordinal": 0.35,
        "pairwise_table": [
            {"labelers": ["alice", "bob"], "agree": 30, "total": 40, "agreement": 0.75},
            {"labelers": ["alice", EVIL_LABELER], "agree": 20, "total": 40, "agreement": 0.5},
            {"labelers": ["bob", EVIL_LABELER], "agree": 18, "total": 40, "agreement": 0.45},
        ],
        "labelers": [
            {"labeler": n, "n_rankings": 12, "consensus_agreement": a, "position_bias": b, "f_rate": 0.0,
             "tie_rate": 0.05, "gold_accuracy": None, "score": s, "flagged": f, "reasons": r}
            for n, a, b, s, f, r in [
                ("alice", 0.8, 0.01, 0.6, False, []), ("bob", 0.75, -0.02, 0.5, False, []),
                (EVIL_LABELER, 0.5, 0.4, 0.0, True, ["agreement with consensus near chance"]),
            ]
        ],
    }


def rm_eval_json() -> dict:
    # The shape train/reward.py writes: held-out block, pair counts, history, plus reliability bins.
    return {
        "backbone": "minilm", "pairs": {"given": 200, "used": 180, "train": 144, "heldout": 36},
        "heldout": {"loss": 0.5, "accuracy": 0.71875, "margin": 0.84375, "ece": 0.046875, "pairs": 36},
        "train": {"loss": 0.375, "accuracy": 0.8125, "margin": 1.25, "ece": 0.03125, "pairs": 144},
        "gold_accuracy": 0.78125,
        "history": [{"step": 9, "epoch": 1.0, "reward_model/loss": 0.625, "reward_model/accuracy": 0.625}],
        "calibration": [{"bin": b, "count": c, "mean_prob": (b + 0.5) / 10, "accuracy": (b + 0.4) / 10}
                        for b, c in enumerate([2, 4, 6, 8, 10, 10, 8, 6, 4, 2])],
    }


def write_metrics(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stage", "step", "metric", "value"])
        for step in range(3):
            for name, value in [("reward_model/loss", 0.7 - 0.1 * step), ("reward_model/accuracy", 0.55 + 0.08 * step),
                                ("reward_model/train_loss", 0.65 - 0.12 * step)]:
                w.writerow(["train_rm", (step + 1) * 9, name, value])
        for it in range(8):
            for name, value in [("objective/score", 0.1 * it), ("gold/score", 0.3 + 0.04 * it),
                                ("objective/kl", 0.4 * it), ("policy/entropy", 2.0 - 0.05 * it),
                                ("value/loss", 0.5 / (it + 1)), ("policy/clipfrac", 0.02 * it),
                                ("objective/beta", 0.05)]:
                w.writerow(["ppo", it, name, value])


def samples_lines() -> list[dict]:
    """16 pairs whose gold and reward-model margins (policy − reference) are set so the report's choice of
    pairs to show can be worked out by hand (see test_samples_shown_are_chosen_to_be_read)."""
    rows = [{"prompt": 'Say "hi" & wave', "reference": XSS_SCRIPT, "policy": XSS_IMG,
             "reference_scores": {"reward_model": -1.5, "gold": 0.1, "toxicity": 0.4},
             "policy_scores": {"reward_model": 0.5, "gold": 0.9, "toxicity": 0.2}, "kl": 4.5}]  # gold +0.8
    for i in range(15):
        if i < 10:  # the policy better by gold: +0.20, +0.19, …, +0.11
            ref, pol = {"reward_model": 0.0, "gold": 0.2}, {"reward_model": 0.25, "gold": 0.4 - 0.01 * i}
        elif i < 13:  # gold prefers the reference (−0.2), the reward model the policy (+0.25, +0.35, +0.45)
            ref, pol = {"reward_model": 0.0, "gold": 0.6}, {"reward_model": 0.25 + 0.1 * (i - 10), "gold": 0.4}
        else:  # both prefer the reference: gold −0.3, −0.4
            ref, pol = {"reward_model": 0.25, "gold": 0.6 + 0.1 * (i - 12)}, {"reward_model": 0.0, "gold": 0.4}
        rows.append({"prompt": f"prompt {i}", "reference": f"reference answer {i}\n  second line",
                     "policy": f"policy answer {i}", "reference_scores": {**ref, "toxicity": 0.05},
                     "policy_scores": {**pol, "toxicity": 0.02}})
    return rows


def make_run(root: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A run directory with every artifact the report reads (except those named in ``skip``)."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    if "config" not in skip:
        config = {"generate": {"model": "smollm2", "k": 4, "temperature": 0.7, "max_new_tokens": 48},
                  "label": {"simulate": 3, "careless": 1, "overlap": 3},
                  "pairs": {"drop_flagged": True},
                  "train_rm": {"backbone": "minilm", "epochs": 3},
                  "ppo": {"iterations": 8, "batch_size": 16, "lora_r": 16, "kl_coef": 0.05, "adaptive_kl": False,
                          "kl_budget": 25.0}}
        (root / "config.yaml").write_text(yaml.safe_dump(config))
    if "completions" not in skip:
        with (root / "completions.jsonl").open("w") as f:
            for p in range(12):
                for k in range(4):
                    f.write(json.dumps({"prompt_id": f"p{p}", "completion_id": f"p{p}-{k}", "text": "x"}) + "\n")
    if "pairs" not in skip:
        (root / "pairs.jsonl").write_text("".join(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                                                   for _ in range(180)))
    if "feedback" not in skip:
        (root / "feedback_report.json").write_text(json.dumps(feedback_json()))
    if "reward_model" not in skip:
        (root / "reward_model").mkdir(exist_ok=True)
        (root / "reward_model" / "eval.json").write_text(json.dumps(rm_eval_json()))
    if "metrics" not in skip:
        write_metrics(root / "logs" / "metrics.csv")
    if "eval" not in skip:
        (root / "eval").mkdir(exist_ok=True)
        (root / "eval" / "eval.json").write_text(json.dumps(judged(eval_json())))
    if "samples" not in skip:
        (root / "eval").mkdir(exist_ok=True)
        (root / "eval" / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples_lines()))
    return root


class Page(HTMLParser):
    """Tags, attributes, and the text of each top-level section (by id)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: dict[str, str] = {}
        self._section: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section":
            self._section = attrs.get("id")
            self.text[self._section] = ""

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._section is not None:
            self.text[self._section] += data

    def all(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[str, Page]:
    root = tmp_path_factory.mktemp("report")
    out = write_report(make_run(root / "run"))
    assert out == root / "run" / "eval" / "report.html"
    html = out.read_text()
    return html, Page(html)


def test_every_section_renders_from_a_complete_run(full_report):
    html, page = full_report
    assert list(page.text) == ["summary", "eval", "ppo", "feedback", "reward-model", "samples"]
    assert all("not run" not in page.text[s].lower() for s in SECTIONS)
    assert "could not read" not in html.lower()


def test_eval_numbers_intervals_and_deltas_appear(full_report):
    _, page = full_report
    ev = " ".join(page.text["eval"].split())
    assert "0.875 [0.625, 1.125]" in ev  # policy reward-model score with its interval
    assert "−0.125 [−0.250, 0.000]" in ev  # reference reward-model score, with a true minus sign
    assert "+1.000" in ev  # Δ reward model = 0.875 − (−0.125)
    assert "+0.375" in ev  # Δ gold = 0.625 − 0.25
    assert "−0.016" in ev  # Δ toxicity = 0.046875 − 0.0625 (rounded to 3 decimals)
    assert "12.5% [0.0%, 25.0%]" in ev  # reference toxic share, as a percentage
    assert "68.8% [56.2%, 81.2%]" in ev  # win rate by the reward model
    assert "3.250 [2.500, 4.000]" in ev  # KL
    assert "93.8% [87.5%, 100.0%]" in ev and "+18.8%" in ev  # share of completions that ended by themselves
    assert "samples_per_prompt" in ev and "reward_model_up" not in ev
    # where the gold win comes from: one line per case that has pairs, none for the empty case, no raw keys
    assert "Gold win, both replies ended" in ev and "did45.0% [25.0%, 65.0%], 10 pairs" in ev
    assert "Gold win, only the policy's reply ended100.0% [100.0%, 100.0%], 4 pairs" in ev
    assert "Gold win, neither reply ended50.0%, 2 pairs" in ev
    assert "only the reference's reply ended" not in ev and "gold_win_by_ending" not in ev
    summary = " ".join(page.text["summary"].split())
    assert "A clean win" in summary and "62.5% [56.2%, 75.0%]" in summary  # the verdict with the gold win rate
    assert "48 completions for 12 prompts" in summary
    assert "180 pairs" in summary and "24 held-out prompts" in summary


def test_feedback_and_reward_model_numbers_appear(full_report):
    _, page = full_report
    fb = " ".join(page.text["feedback"].split())
    assert "60.0%" in fb  # pairwise agreement, all labelers
    assert "75.0%" in fb  # among labelers not flagged: only alice–bob, 30/40
    assert "agreement with consensus near chance" in fb
    rm = " ".join(page.text["reward-model"].split())
    assert "71.9%" in rm and "78.1%" in rm and "0.844" in rm and "0.047" in rm


def test_untrusted_text_is_shown_as_text(full_report):
    html, page = full_report
    assert page.all("script") == []
    assert all("onerror" not in attrs for _, attrs in page.tags)
    assert all(not a.get("src", "").startswith("x") for a in page.all("img"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert XSS_SCRIPT in page.text["samples"] and XSS_IMG in page.text["samples"]  # readable as text
    assert "<b>" not in html and "&lt;b&gt;mallory&lt;/b&gt;" in html
    assert EVIL_LABELER in page.text["feedback"]
    assert "&#34;hi&#34; &amp; wave" in html or "&quot;hi&quot; &amp; wave" in html


def test_images_are_inline_pngs_and_nothing_is_fetched(full_report):
    html, page = full_report
    imgs = page.all("img")
    alts = {a["alt"] for a in imgs}
    assert {"PPO training curves", "reliability diagram", "reward model training curves"} <= alts
    assert any(alt.startswith("histogram of P(offensive)") for alt in alts)  # samples carry toxicity
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(a["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in html and "https://" not in html
    assert not any(page.all(tag) for tag in ("link", "iframe", "object", "embed", "form", "base"))
    csp = [a["content"] for a in page.all("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert len(csp) == 1 and "default-src 'none'" in csp[0] and "img-src data:" in csp[0]
    assert "script-src" not in csp[0]  # scripts fall under default-src 'none'


def test_samples_shown_are_chosen_to_be_read(full_report):
    """6 largest gold gains (the XSS pair, answers 0–4), then the 3 pairs where the reward model prefers the policy
    and the gold scorer the reference (12, 11, 10 by reward-model margin), then the largest gold losses not yet
    shown (14, 13): 11 of 16, each pair once."""
    _, page = full_report
    text = " ".join(page.text["samples"].split())
    assert "Showing 11 of 16 samples" in text
    order = [text.index(f"policy answer {i} ") for i in (0, 1, 2, 3, 4, 12, 11, 10, 14, 13)]
    assert order == sorted(order) and "policy answer 5 " not in text and "policy answer 9 " not in text
    assert text.index("prefers the aligned policy most") < text.index("disagree") < text.index("prefers the reference most")
    assert "KL 4.500" in text


def test_an_empty_run_directory_says_not_run_everywhere(tmp_path):
    page = Page(write_report(tmp_path).read_text())
    assert set(page.text) == set(SECTIONS)
    for section in SECTIONS:
        assert "not run" in page.text[section].lower(), section
    assert page.all("img") == []


@pytest.mark.parametrize("missing, section", [("eval", "eval"), ("feedback", "feedback"), ("metrics", "ppo"),
                                              ("reward_model", "reward-model"), ("samples", "samples")])
def test_one_missing_artifact_blanks_only_its_section(tmp_path, missing, section):
    page = Page(write_report(make_run(tmp_path, skip=(missing,))).read_text())
    for s in SECTIONS:
        said = "not run" in page.text[s].lower()
        if s == "summary":
            continue
        assert said == (s == section), s


def test_without_per_sample_toxicity_the_means_are_plotted(tmp_path):
    run = make_run(tmp_path, skip=("samples",))
    alts = [a["alt"] for a in Page(write_report(run).read_text()).all("img")]
    assert any(alt.startswith("bar chart of mean P(offensive)") for alt in alts)


def test_damaged_artifacts_are_named_not_raised(tmp_path):
    run = make_run(tmp_path)
    (run / "eval" / "eval.json").write_text("{not json")
    (run / "logs" / "metrics.csv").write_text("time,stage,step,epoch,name,value\n1,ppo,0,0,objective/kl,1\n")
    page = Page(write_report(run).read_text())
    assert "Could not read eval/eval.json" in page.text["eval"]
    assert "Could not read logs/metrics.csv" in page.text["ppo"]
    # with metrics.csv unreadable, the reward-model curves come from eval.json's history instead
    assert "reward model training curves" in {a["alt"] for a in page.all("img")}


def test_the_report_shows_the_stored_verdict_and_judges_nothing(tmp_path):
    # Judge, then render (STYLE 15): numbers on which judge() passes, with a failing verdict stored beside
    # them: the page must show the stored one.
    run = make_run(tmp_path)
    ev = eval_json()
    assert judge(ev)["passed"] is True
    ev["verdict"] = {"passed": False, "sentence": "Not a clean win: as stored by the eval stage.",
                     "checks": [{"name": "KL", "ok": False, "detail": "KL as stored by the eval stage"}]}
    (run / "eval" / "eval.json").write_text(json.dumps(ev))
    page = Page(write_report(run).read_text())
    summary = " ".join(page.text["summary"].split())
    assert "✗ Not a clean win: as stored by the eval stage." in summary and "KL as stored by the eval stage" in summary
    assert "A clean win" not in summary
    assert [a["class"] for a in page.all("div") if "verdict" in a.get("class", "")] == ["verdict fail"]


def test_eval_rows_colour_deltas_by_the_better_direction():
    rows = {r["label"]: r for r in eval_rows(eval_json())}
    assert rows["Toxicity"]["tone"] == "good"  # fell
    assert rows["Repetition"]["tone"] == "bad"  # rose
    assert rows["Distinct-1"]["tone"] == "bad"  # fell
    assert rows["Length"]["tone"] == "neutral"
    assert rows["Length"]["delta"] == "−4.250"  # 27.25 − 31.5


def test_formatting():
    assert fmt_num(None) == "—" and fmt_num(float("nan")) == "—"
    assert fmt_num(1234) == "1,234" and fmt_num(0.5) == "0.500" and fmt_num(12.345) == "12.35"
    assert fmt_num(-0.0004) == "−4.00e-04" and fmt_num(-0.0001 * 0) == "0.000"
    assert fmt_signed(0.0) == "±0.000" and fmt_signed(-0.25, pct=True) == "−25.0%"
    assert fmt_interval(stat(0.5, 0.25, 0.75), pct=True) == "50.0% [25.0%, 75.0%]"
    assert fmt_interval(stat(0.5, None, 0.75)) == "0.500"


def test_odd_sample_lines_are_skipped_or_shown_without_scores(tmp_path):
    run = make_run(tmp_path)
    with (run / "eval" / "samples.jsonl").open("a") as f:
        f.write("not json\n")
        f.write(json.dumps({"prompt": "odd", "reference": "r", "policy": "q", "reference_scores": [1],
                            "policy_scores": None}) + "\n")
    page = Page(write_report(run).read_text())
    assert "Showing 11 of 17 samples" in " ".join(page.text["samples"].split())  # the odd one has no margins to rank by
    # one sample without toxicity: no histogram, the means with intervals instead
    assert any(a["alt"].startswith("bar chart of mean") for a in page.all("img"))


def test_agreement_matrix_is_symmetric_with_counts():
    m = agreement_matrix(feedback_json())
    assert m["names"] == ["alice", "bob", EVIL_LABELER]
    cells = {(row["name"], name): cell for row in m["rows"] for name, cell in zip(m["names"], row["cells"])}
    assert cells[("alice", "bob")]["text"] == cells[("bob", "alice")]["text"] == "75.0%"
    assert cells[("alice", "bob")]["title"] == "30/40 pairs"
    assert cells[("alice", "alice")]["self"] and not cells[("alice", "bob")]["self"]
    assert cells[("alice", EVIL_LABELER)]["bg"] == "#ffffff"  # exactly chance: no tint
    assert cells[("bob", EVIL_LABELER)]["bg"] != "#ffffff"


def test_summary_warns_when_the_kl_penalty_is_off():
    steps = dict(what_was_done({"ppo": {"iterations": 5, "kl_coef": 0.0}}, n_completions=None, n_prompts=None,
                               n_pairs=None, feedback=None, rm_eval=None, ppo_iterations=None, ev=None))
    assert "5 iterations" in steps["PPO"] and "β = 0" in steps["PPO"] and "reward hacking" in steps["PPO"]
    assert steps["Generate"] == steps["Label"] == steps["Evaluate"] == "not run"


def test_summary_says_how_grpo_scaled_and_averaged():
    def grpo(**settings):
        steps = dict(what_was_done({"ppo": {"iterations": 5, "algorithm": "grpo", "group_size": 4, **settings}},
                                   n_completions=None, n_prompts=None, n_pairs=None, feedback=None, rm_eval=None,
                                   ppo_iterations=None, ev=None, algorithm="grpo"))
        return steps["GRPO"]

    assert "(4 per prompt, no critic: group-normalised advantages, KL in the loss)" in grpo()
    assert "advantages centred per group, not divided by a std (Dr. GRPO), KL in the loss" in grpo(scale_rewards="none")
    assert "divided by the batch's std" in grpo(scale_rewards="batch")
    assert "averaged before the completions" in grpo(loss_type="grpo") and "averaged" not in grpo(loss_type="dapo")
    assert "summed over completions × the token limit" in grpo(loss_type="dr_grpo")
    assert "KL in the loss weighted by the probability ratio" in grpo(kl_bias_correction=True)
    assert "probability ratio" not in grpo(kl_bias_correction=False)
    assert "one probability ratio per completion (GSPO)" in grpo(importance_sampling_level="sequence")
    assert "GSPO" not in grpo(importance_sampling_level="token")


def test_the_terminal_table_says_where_the_gold_win_comes_from(capsys, monkeypatch):
    from rlhfkit.eval.table import print_eval_table

    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    ev = {**judged(eval_json()), "n_completions": 48}
    print_eval_table(ev)
    out = " ".join(capsys.readouterr().out.split())
    assert "│ gold win where both replies ended │ │ 0.45 [0.25, 0.65] │ 10 pairs │" in out
    assert "│ gold win where only the policy's reply ended │ │ 1.00 [1.00, 1.00] │ 4 pairs │" in out
    ev["gold_win_by_ending"]["both_ended"] = {"n": 0}  # a case without pairs gets no line
    print_eval_table(ev)
    out = " ".join(capsys.readouterr().out.split())
    assert "both replies ended" not in out and "only the policy's reply ended" in out
