"""The ``label`` and ``pairs`` stages: tasks from completions, simulated labelers, the agreement
report, and the export of pairs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from rlhfkit.data.errors import RlhfkitError


def store_location(run_dir: str, store: str) -> str:
    return store or str(Path(run_dir) / "feedback.db")


def open_store(run_dir: str, store: str, *, must_exist: bool = False):
    from rlhfkit.feedback.store import FeedbackStore

    where = store_location(run_dir, store)
    if must_exist and "://" not in where and not Path(where).exists():
        raise RlhfkitError(f"{where}: no feedback store (check --run-dir/--store; `rlhfkit label` makes one from "
                           "RUN_DIR/completions.jsonl)")
    return FeedbackStore(where)


def ensure_guideline(store) -> int:
    """The shipped guideline, stored as a new version when its text changed; returns the version."""
    from rlhfkit import defaults

    text = defaults.guideline_path().read_text()
    latest = store.latest_guideline()
    if latest is not None and latest.text == text:
        return latest.version
    return store.add_guideline(text)


def import_tasks(store, completions_path: Path, *, criterion: str, overlap: int, shown_as: str | None = None):
    """One task per prompt with its K completions (idempotent on prompt id). Each line is checked by the
    store's rules as it is read, so an error names the file, the line and the field; ``shown_as`` is
    the file's name in messages (an upload's own name, not a server's temporary path)."""
    from rlhfkit.data.errors import RecordError
    from rlhfkit.data.io import read_completions
    from rlhfkit.feedback.rules import MAX_COMPLETIONS, StoreError, check_id, check_text

    name = shown_as or str(completions_path)

    def check(c) -> None:
        for field, rule in (("prompt_id", check_id), ("completion_id", check_id), ("text", check_text),
                            ("prompt", check_text)):
            try:
                rule(getattr(c, field), field)
            except StoreError as e:
                raise RecordError(str(e), field=field) from None

    try:
        completions = read_completions(completions_path, check)
    except RecordError as e:
        raise e.at(name, e.line) from None
    by_prompt: dict[str, list] = defaultdict(list)
    for c in completions:
        by_prompt[c.prompt_id].append(c)
    items = []
    for pid, cs in by_prompt.items():
        if not 2 <= len(cs) <= MAX_COMPLETIONS:
            raise RlhfkitError(f"{name}: prompt {pid!r} has {len(cs)} completions; a task needs 2 to {MAX_COMPLETIONS}")
        if not cs[0].prompt:
            raise RlhfkitError(f"{name}: completion {cs[0].completion_id!r} lacks field 'prompt'")
        items.append((pid, cs[0].prompt, [(c.completion_id, c.text) for c in cs]))
    return store.add_tasks(items, criterion=criterion, overlap=overlap)


def simulate_labeling(store, labelers, *, guideline_version: int, seed: int, progress: bool = True) -> int:
    """Each simulated labeler takes tasks from the store's assignment queue in turn until none is left.

    The display order is a seeded shuffle per (labeler, task), stored with the ranking, so position
    bias can be measured exactly as for people.
    """
    from rich.progress import Progress

    existing = {lab.name for lab in store.list_labelers()}
    for lab in labelers:
        if lab.name not in existing:  # a re-run continues with the same (deterministic) labelers
            store.add_labeler(lab.name, kind="simulated", meta={"noise": lab.noise, "careless": lab.careless,
                                                              "position_bias": lab.position_bias, "seed": lab.seed})
        store.confirm_guideline(lab.name, guideline_version)
    need = store.progress()
    total = need.rankings_needed - need.rankings_done
    done = 0
    with Progress(disable=not progress) as bar:
        task = bar.add_task("label", total=total)
        active = list(labelers)
        while active:
            for lab in list(active):
                a = store.assign(lab.name)
                if a is None:
                    active.remove(lab)
                    continue
                ids = [cid for cid, _ in a.task.completions]
                texts = [t for _, t in a.task.completions]
                order = np.random.default_rng([seed, lab.seed, a.task.task_id]).permutation(len(ids)).tolist()
                marks = lab.rank(a.task.prompt, texts, order)
                fail_reasons = {ids[i]: "fails the guideline (empty, repetitive, off-topic or nonsensical)"
                                for i, m in enumerate(marks) if m == "F"}
                store.submit_ranking(lab.name, a.task.task_id, dict(zip(ids, marks)), [ids[i] for i in order],
                                     fail_reasons=fail_reasons or None, guideline_version=guideline_version)
                done += 1
                bar.update(task, advance=1)
    return done


def warm_gold(path: Path) -> None:
    """Encode every text the simulated labelers will judge in a few large batches first: the sentence
    encoder caches embeddings, and a ranking at a time would run it on ~6 texts per call (~3× slower)."""
    from rlhfkit.data.io import read_completions
    from rlhfkit.feedback.simulate import default_scorer

    cs = read_completions(path)
    default_scorer().components([c.prompt for c in cs], [c.text for c in cs])


def run_label(cfg) -> dict:
    """The ``label`` stage: tasks from RUN_DIR/completions.jsonl; N simulated labelers rank them."""
    from rlhfkit.config import save_resolved
    from rlhfkit.feedback.simulate import make_labelers

    completions = Path(cfg.run_dir) / "completions.jsonl"
    if not completions.exists():
        raise RlhfkitError(f"{completions}: no completions (run `rlhfkit generate` first)")
    with open_store(cfg.run_dir, cfg.store) as store:
        version = ensure_guideline(store)
        counts = import_tasks(store, completions, criterion=cfg.criterion, overlap=cfg.overlap)
        labelers = make_labelers(cfg.simulate, cfg.careless, noise=cfg.noise, position_bias=cfg.position_bias,
                                 seed=cfg.seed) if cfg.simulate else []
        if labelers:
            warm_gold(completions)
        n = simulate_labeling(store, labelers, guideline_version=version, seed=cfg.seed)
        progress = store.progress()
    save_resolved(cfg.run_dir, "label", cfg)
    return {"tasks_added": counts.added, "tasks_existing": counts.existing, "rankings": n,
            "careless": [l.name for l in labelers if l.careless], "progress": progress,
            "store": store_location(cfg.run_dir, cfg.store), "guideline_version": version}


def feedback_report(store) -> dict:
    """The agreement report over every current ranking (with display orders, times and gold answers)."""
    from rlhfkit.feedback.agreement import agreement_report

    rankings = store.current_rankings()
    if not rankings:
        raise RlhfkitError("the feedback store holds no rankings yet")
    rows = {str(r.ranking_id): r for r in store.history() if r.current}
    shown = {rid: r.shown_order for rid, r in rows.items()}
    seconds = {rid: r.seconds_spent for rid, r in rows.items() if r.seconds_spent is not None}
    return agreement_report(rankings, shown=shown, seconds=seconds or None, gold=store.gold_answers() or None)


def run_label_report(run_dir: str, store: str = "") -> dict:
    """``label report``: agreement table and flagged labelers; also written to RUN_DIR/feedback_report.json."""
    from rlhfkit.data.io import atomic_write_json

    with open_store(run_dir, store, must_exist=True) as s:
        report = feedback_report(s)
    atomic_write_json(Path(run_dir) / "feedback_report.json", report)
    return report


def run_pairs(cfg) -> dict:
    """The ``pairs`` stage: every pair of every current ranking → RUN_DIR/pairs.jsonl."""
    from rlhfkit.config import save_resolved
    from rlhfkit.data.formats import export_trl
    from rlhfkit.data.io import atomic_write_json, write_jsonl
    from rlhfkit.data.pairs import ranking_to_pairs

    for path in [Path(cfg.run_dir) / "pairs.jsonl"] + ([Path(cfg.trl)] if cfg.trl else []):
        if path.exists() and not cfg.force:
            raise RlhfkitError(f"{path} already exists (use --force to overwrite it)")
    with open_store(cfg.run_dir, cfg.store, must_exist=True) as store:
        report = feedback_report(store)
        rankings = store.current_rankings()
        kinds = {lab.name: lab.kind for lab in store.list_labelers()}
    labelers = {row["labeler"]: row for row in report["labelers"]}
    flagged = sorted(name for name, row in labelers.items() if row["flagged"])
    pairs, dropped = [], 0
    for r in rankings:
        if cfg.drop_flagged and r.labeler in flagged:
            dropped += 1
            continue
        weight = 1.0
        if cfg.weight == "quality":
            weight = float(labelers[r.labeler]["score"] or 0.0)
        pairs.extend(ranking_to_pairs(r, source=kinds.get(r.labeler, "ranking"), weight=weight))
    if not pairs:
        raise RlhfkitError("no pairs: every ranking was tied, failed throughout, or dropped")
    out = Path(cfg.run_dir) / "pairs.jsonl"
    write_jsonl(out, pairs)
    atomic_write_json(Path(cfg.run_dir) / "feedback_report.json", report)
    if cfg.trl:
        export_trl(pairs, cfg.trl)
    save_resolved(cfg.run_dir, "pairs", cfg)
    return {"path": str(out), "pairs": len(pairs), "rankings": len(rankings) - dropped, "dropped_rankings": dropped,
            "flagged": flagged}
