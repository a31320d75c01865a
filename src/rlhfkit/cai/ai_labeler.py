"""The AI labeler (RLAIF, Bai et al. 2022 §4): a language model, asked a constitution's comparison
question, ranks the K completions of a task like any other labeler in the feedback store.

For one pair (x, y) of replies to a request it is asked, in one user turn::

    Someone asked an AI assistant: "REQUEST"

    QUESTION                      (the comparison question of a principle drawn at random)

    (A) x

    (B) y

and its assistant turn is started with ``The answer is (`` so that the next token is the answer.
P(A) and P(B) are read from the softmax of that next token's logits, and renormalised over the two
(Bai et al. §4.1: "we compute the log-probability of the responses (A) and (B)"; Kadavath et al.
2022 for the multiple-choice format).

Position bias. Small models pick "(A)" or "(B)" largely regardless of content; so every pair is asked
in BOTH display orders, and the preference for x is the mean of P(x | x shown first) and
P(x | x shown second)::

    pref(x ≻ y) = ½ · (P_A(x, y) + P_B(y, x)),   P_A(x, y) = P(A) / (P(A) + P(B)) with x as (A)

A judge that always answers "A" gets pref = ½ · (1 + 0) = ½ for every pair: no preference at all.
And pref(x ≻ y) + pref(y ≻ x) = 1 exactly. (Zheng et al. 2023, "Judging LLM-as-a-judge", §3.4:
swap positions to cancel position bias.)

Ranking. For K completions every pair is judged; completion i scores its pairwise wins
w_i = Σ_j pref(i ≻ j) (a Borda count of soft wins), and ranks follow w with competition ranking
(1, 2, 2, 4; totals within ``tie_eps`` tie), as the simulated labelers do.

F. A completion the guideline fails (empty, too short, symbols, repetitive: the rule-based
:func:`rlhfkit.feedback.gold.fail_reason`) is marked F without asking the model; the model only
orders the rest. This shares the guideline's F rule with the gold scorer, on purpose: the guideline
asks every labeler to mark such replies F, and a 135M judge cannot be relied on to notice them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.data.records import FAIL

ANSWER_PREFIX = "The answer is ("
"""The start of the judge's assistant turn: the next token is its answer, "A" or "B"."""
CHOICES = ("A", "B")
TIE_EPS = 1e-4
"""Win totals closer than this are a tie (identical replies get exactly equal totals)."""


def comparison_prompt(request: str, first: str, second: str, question: str) -> str:
    """The user turn asking which of two replies is better; ``first`` is shown as (A)."""
    return f'Someone asked an AI assistant: "{request}"\n\n{question}\n\n(A) {first}\n\n(B) {second}'


def judge_text(tokenizer, request: str, first: str, second: str, question: str) -> str:
    """The whole judge input: the comparison in the chat template, the assistant turn begun with ANSWER_PREFIX."""
    from rlhfkit.models.load import format_prompt

    user = comparison_prompt(request, first, second, question)
    if getattr(tokenizer, "chat_template", None):
        return format_prompt(tokenizer, user) + ANSWER_PREFIX
    return f"{user}\n\n{ANSWER_PREFIX}"


def answer_token_ids(tokenizer, prefix: str = ANSWER_PREFIX) -> tuple[int, int]:
    """The token ids of "A" and "B" as they follow ``prefix``.

    Checked, not assumed: ``prefix + "A"`` must tokenize as the tokens of ``prefix`` plus exactly one
    token. A tokenizer that merges "(A" into one token would otherwise be read at the wrong place.
    """
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids = []
    for choice in CHOICES:
        full = tokenizer(prefix + choice, add_special_tokens=False)["input_ids"]
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            raise RlhfkitError(
                f"the judge's tokenizer does not put {choice!r} in a token of its own after {prefix!r} "
                f"({tokenizer.convert_ids_to_tokens(full)}); pick another judge model"
            )
        ids.append(full[-1])
    return ids[0], ids[1]


def debiased_preference(p_a_first: float, p_a_second: float) -> float:
    """pref(x ≻ y) from the two display orders: ``p_a_first`` = P_A with x shown as (A), ``p_a_second``
    = P_A with y shown as (A) (both renormalised over A and B). See the module docstring."""
    return 0.5 * (p_a_first + (1.0 - p_a_second))


def ranks_by_wins(pref: np.ndarray, failed: list[bool], eps: float = TIE_EPS) -> list:
    """Marks (rank 1..K or "F") from a (K, K) matrix ``pref[i, j]`` = pref(i ≻ j).

    Failed completions are F; the others are ranked by w_i = Σ_{j kept, j ≠ i} pref[i, j] with
    competition ranks (totals within ``eps`` tie). Entries in failed rows/columns are ignored.
    """
    from rlhfkit.feedback.simulate import competition_ranks

    kept = [i for i, f in enumerate(failed) if not f]
    wins = [sum(float(pref[i, j]) for j in kept if j != i) for i in kept]
    marks: list = [FAIL] * len(failed)
    for i, r in zip(kept, competition_ranks(wins, eps)):
        marks[i] = r
    return marks


@dataclass
class PairJudgement:
    """One pair (i, j) of a task, asked in both orders."""

    i: int
    j: int
    principle: str
    p_a_ij: float  # P_A with completion i shown as (A)
    p_a_ji: float  # P_A with completion j shown as (A)
    mass_ij: float  # P(A) + P(B) before renormalising: how much the judge treats it as a choice
    mass_ji: float

    @property
    def pref(self) -> float:
        """pref(i ≻ j), debiased."""
        return debiased_preference(self.p_a_ij, self.p_a_ji)


@dataclass
class AIJudgement:
    """What the AI labeler decided about one task."""

    marks: list  # rank 1..K or "F", in the task's completion order
    wins: list[float]  # Σ_j pref(i ≻ j) over the non-failed completions (nan for F)
    pairs: list[PairJudgement] = field(default_factory=list)
    fail_reasons: dict[int, str] = field(default_factory=dict)


class AILabeler:
    """A causal LM ranking completions by a constitution's comparison questions.

    ``model``/``tokenizer``: any causal LM with its tokenizer (rlhfkit.models.load.load_policy);
    ``name`` is its labeler name in the store; ``model_name`` what it is recorded as.
    """

    def __init__(self, model, tokenizer, constitution, *, name: str, model_name: str, seed: int = 0,
                 batch_size: int = 16, max_reply_tokens: int = 128, tie_eps: float = TIE_EPS):
        self.model = model
        self.tokenizer = tokenizer
        self.constitution = constitution
        self.name = name
        self.model_name = model_name
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.max_reply_tokens = int(max_reply_tokens)
        self.tie_eps = float(tie_eps)
        self.answer_ids = answer_token_ids(tokenizer)

    @property
    def meta(self) -> dict:
        """What the store records about this labeler: the model and the principles it may ask."""
        c = self.constitution
        return {"model": self.model_name, "constitution": c.name, "constitution_version": c.version,
                "principles": c.ids, "seed": self.seed, "answer_prefix": ANSWER_PREFIX,
                "debiased": "both display orders", "fail_rule": "rlhfkit.feedback.gold.fail_reason"}

    def _cut(self, text: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_reply_tokens:
            return text
        return self.tokenizer.decode(ids[: self.max_reply_tokens], skip_special_tokens=True).rstrip() + " …"

    def answer_probs(self, texts: list[str]) -> np.ndarray:
        """(N, 2): P(A), P(B) of the next token after each full judge text (only the last position's
        logits are computed). Batched by length; rows back in input order."""
        import torch

        from rlhfkit.models.policy import position_ids

        out = np.zeros((len(texts), 2))
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # the last position is then every row's real last token
        try:
            for lo in range(0, len(order), self.batch_size):
                rows = order[lo : lo + self.batch_size]
                enc = self.tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True,
                                     add_special_tokens=False).to(self.model.device)
                with torch.no_grad():
                    logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                        position_ids=position_ids(enc["attention_mask"]), logits_to_keep=1).logits
                probs = torch.softmax(logits[:, -1].float(), dim=-1)  # (B, V)
                out[rows] = probs[:, list(self.answer_ids)].cpu().double().numpy()  # (B, 2)
        finally:
            self.tokenizer.padding_side = side
        return out

    def judge(self, tasks: list[tuple[str, str, list[str]]]) -> list[AIJudgement]:
        """Rank each task (key, request, completion texts); ``key`` (e.g. the prompt id) seeds the
        principles drawn for its pairs. All pairs of all tasks, both orders, go through
        :meth:`answer_probs` together."""
        from rlhfkit.cai.constitution import draw_principles
        from rlhfkit.feedback.gold import fail_reason

        texts, index = [], []  # index[q] = (task, i, j, principle): query 2q is (i, j), 2q + 1 is (j, i)
        fails: list[dict[int, str]] = []
        for t, (key, request, completions) in enumerate(tasks):
            k = len(completions)
            fails.append({i: r for i, c in enumerate(completions) if (r := fail_reason(c)) is not None})
            all_pairs = list(combinations(range(k), 2))
            principles = draw_principles(self.constitution, len(all_pairs), seed=self.seed, key=str(key))
            cut = [self._cut(c) for c in completions]
            for (i, j), p in zip(all_pairs, principles):
                if i in fails[t] or j in fails[t]:
                    continue
                texts.append(judge_text(self.tokenizer, request, cut[i], cut[j], p.comparison_question))
                texts.append(judge_text(self.tokenizer, request, cut[j], cut[i], p.comparison_question))
                index.append((t, i, j, p.id))
        probs = self.answer_probs(texts) if texts else np.zeros((0, 2))  # (2Q, 2)
        mass = probs.sum(1)  # (2Q,)
        p_a = probs[:, 0] / np.maximum(mass, 1e-30)  # (2Q,) renormalised over the two answers
        pairs: list[list[PairJudgement]] = [[] for _ in tasks]
        for q, (t, i, j, pid) in enumerate(index):
            pairs[t].append(PairJudgement(i, j, pid, float(p_a[2 * q]), float(p_a[2 * q + 1]),
                                          float(mass[2 * q]), float(mass[2 * q + 1])))
        out = []
        for t, (_, _, completions) in enumerate(tasks):
            k = len(completions)
            pref = np.full((k, k), 0.5)  # (K, K) pref[i, j] = pref(i ≻ j)
            for pj in pairs[t]:
                pref[pj.i, pj.j], pref[pj.j, pj.i] = pj.pref, 1.0 - pj.pref
            failed = [i in fails[t] for i in range(k)]
            marks = ranks_by_wins(pref, failed, self.tie_eps)
            wins = [math.nan if failed[i] else sum(pref[i, j] for j in range(k) if j != i and not failed[j])
                    for i in range(k)]
            out.append(AIJudgement(marks, wins, pairs[t], fails[t]))
        return out


def judgement_comment(judgement: AIJudgement, completion_ids: list[str]) -> str:
    """The audit trail stored with an AI ranking: each pair's principle and debiased preference."""
    return json.dumps({"ai_pairs": [
        {"a": completion_ids[p.i], "b": completion_ids[p.j], "principle": p.principle, "pref_a": round(p.pref, 6),
         "p_a_shown_first": round(p.p_a_ij, 6), "p_a_shown_second": round(p.p_a_ji, 6)}
        for p in judgement.pairs
    ]})


def register(store, labeler: AILabeler, guideline_version: int | None) -> None:
    """Add ``labeler`` to the store (kind "ai"); a labeler of that name already there must be the
    same AI labeler (kind, model, constitution, seed), so an interrupted run continues."""
    from rlhfkit.feedback.store import NotFoundError

    try:
        existing = store.get_labeler(labeler.name)
    except NotFoundError:
        store.add_labeler(labeler.name, kind="ai", meta=labeler.meta)
    else:
        if existing.kind != "ai" or existing.meta != labeler.meta:
            raise RlhfkitError(
                f"labeler {labeler.name!r} is already in the store as a different labeler "
                f"(kind {existing.kind}, meta {existing.meta}); choose another --name"
            )
    if guideline_version is not None:
        store.confirm_guideline(labeler.name, guideline_version)


def label_with_ai(store, labeler: AILabeler, *, guideline_version: int | None, progress: bool = True) -> int:
    """The AI labeler takes tasks from the store's assignment queue until none is left, as the
    simulated labelers do (:func:`rlhfkit.feedback.label.simulate_labeling`). Returns rankings stored.

    The store hands out one task at a time; all pairs of that task, in both orders, go through the
    judge in batches. ``shown_order`` is the stored completion order: the AI saw every pair both ways.
    """
    from rich.progress import Progress

    register(store, labeler, guideline_version)
    need = store.progress()
    done = 0
    with Progress(disable=not progress) as bar:
        task_bar = bar.add_task(f"label ({labeler.name})", total=need.rankings_needed - need.rankings_done)
        while (a := store.assign(labeler.name)) is not None:
            ids = [cid for cid, _ in a.task.completions]
            texts = [t for _, t in a.task.completions]
            (verdict,) = labeler.judge([(a.task.prompt_id, a.task.prompt, texts)])
            fail_reasons = {ids[i]: f"fails the guideline ({reason})" for i, reason in verdict.fail_reasons.items()}
            store.submit_ranking(labeler.name, a.task.task_id, dict(zip(ids, verdict.marks)), ids,
                                 fail_reasons=fail_reasons or None, guideline_version=guideline_version,
                                 comment=judgement_comment(verdict, ids))
            done += 1
            bar.update(task_bar, advance=1)
    return done


def default_name(model: str) -> str:
    from pathlib import Path

    return "ai-" + (Path(model).name or model)


def run_ai_label(cfg, *, progress: bool = True) -> dict:
    """The ``cai label`` stage: tasks from RUN_DIR/completions.jsonl; the AI labeler ranks them."""
    from pathlib import Path

    from rlhfkit.cai.constitution import load_constitution
    from rlhfkit.config import save_resolved
    from rlhfkit.feedback.label import ensure_guideline, import_tasks, open_store, store_location
    from rlhfkit.models.load import load_policy, pick_device

    completions = Path(cfg.run_dir) / "completions.jsonl"
    if not completions.exists():
        raise RlhfkitError(f"{completions}: no completions (run `rlhfkit generate` first)")
    constitution = load_constitution(cfg.constitution)
    model, tokenizer = load_policy(cfg.model, device=pick_device(cfg.device), dtype=cfg.dtype)
    labeler = AILabeler(model, tokenizer, constitution, name=cfg.name or default_name(cfg.model), model_name=cfg.model,
                        seed=cfg.seed, batch_size=cfg.batch_size, max_reply_tokens=cfg.max_reply_tokens,
                        tie_eps=cfg.tie_eps)
    with open_store(cfg.run_dir, cfg.store) as store:
        version = ensure_guideline(store)
        counts = import_tasks(store, completions, criterion=cfg.criterion, overlap=cfg.overlap)
        n = label_with_ai(store, labeler, guideline_version=version, progress=progress)
        prog = store.progress()
    save_resolved(cfg.run_dir, "cai_label", cfg)
    return {"tasks_added": counts.added, "tasks_existing": counts.existing, "rankings": n, "labeler": labeler.name,
            "progress": prog, "store": store_location(cfg.run_dir, cfg.store), "guideline_version": version}
