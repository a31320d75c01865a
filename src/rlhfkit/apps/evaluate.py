"""`rlhfkit apps-eval`: how well a model does with each app, on data written for rlhfkit.

Two tasks, shipped in ``rlhfkit/defaults/apps_eval/``:

- **arithmetic** (``arithmetic.jsonl``): grade-school word problems with integer answers, each with the
  arithmetic that solves it (``solution``). Methods: ``plain`` (few-shot, answers only), ``cot``
  (few-shot chain of thought, ``apps.cot``) and ``pal`` (the model writes ``solution()``, which runs in
  the sandbox, ``apps.pal``). Checked by number match: the reply's answer (``cot.extract_answer``; for
  PAL what the program printed) equals the expected integer.
- **documents** (``documents.jsonl`` over ``handbook/``): questions about an invented company, answerable
  only from its handbook. Methods: ``closed-book`` (the question alone) and ``rag`` (top-k handbook
  chunks through ``apps.rag``, MiniLM + faiss). Checked by key-phrase match: one of the question's
  ``accept`` phrases occurs in the reply as whole words, after both are normalised alike
  (``normalize_text``). ``rag`` also records whether the question's source file was among the
  documents shown (retrieval hit), so a miss can be put on retrieval or on reading.

Every reply is greedy, so a run is deterministic. Accuracy comes with a 95% Wilson interval
(``eval.metrics.wilson_interval``): with 40 items an interval is about ±15 points wide, so only large
differences between methods or models mean anything. A prompt that does not fit the model's context
window with its reply budget is scored wrong and counted in ``no_fit``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data.errors import RecordError, RlhfkitError

DATA = Path(__file__).resolve().parents[1] / "defaults" / "apps_eval"
PROBLEMS, QUESTIONS, HANDBOOK = DATA / "arithmetic.jsonl", DATA / "documents.jsonl", DATA / "handbook"
TASKS = {"plain": "arithmetic", "cot": "arithmetic", "pal": "arithmetic", "closed-book": "documents", "rag": "documents"}
METHODS = tuple(TASKS)
CLOSED_BOOK_SYSTEM = "Answer the question in one short sentence."


# ---- data ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: int
    solution: str = ""  # the arithmetic that gives the answer (documentation; the tests run it)


@dataclass(frozen=True)
class DocQuestion:
    id: str
    question: str
    answer: str  # the expected answer, as a person would write it
    accept: tuple[str, ...]  # phrases, any of which in the reply makes it right
    source: str = ""  # the handbook file that holds the answer


def _field(d: dict, name: str, kind: type):
    value = d.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        raise RecordError(f"field '{name}' must be a non-empty {kind.__name__}", field=name)
    return value


def _read(path: str | Path, build) -> list:
    from rlhfkit.data.io import iter_jsonl_dicts

    items, seen = [], set()
    for line, d in iter_jsonl_dicts(path):
        try:
            item = build(d)
            if item.id in seen:
                raise RecordError(f"field 'id' repeats {item.id!r}", field="id")
        except RecordError as e:
            raise e.at(str(path), line) from None
        seen.add(item.id)
        items.append(item)
    if not items:
        raise RlhfkitError(f"{path}: no items")
    return items


def read_problems(path: str | Path = PROBLEMS) -> list[Problem]:
    """Arithmetic problems {id, question, answer (integer), solution}; errors name file:line and field."""
    return _read(path, lambda d: Problem(_field(d, "id", str), _field(d, "question", str), _field(d, "answer", int),
                                         str(d.get("solution", ""))))


def read_questions(path: str | Path = QUESTIONS) -> list[DocQuestion]:
    """Document questions {id, question, answer, accept: [phrase, …], source}; errors name file:line and field."""
    def build(d):
        accept = _field(d, "accept", list)
        if not all(isinstance(a, str) and normalize_text(a) for a in accept):
            raise RecordError("field 'accept' must list phrases with letters or digits", field="accept")
        return DocQuestion(_field(d, "id", str), _field(d, "question", str), _field(d, "answer", str),
                           tuple(accept), str(d.get("source", "")))
    return _read(path, build)


# ---- checkers (pure) ----------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Lower case, thousands separators dropped ('18,000' → '18000'), every run of characters other than
    letters, digits and ':' between digits ('02:30') turned into one space, trimmed."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower())
    text = re.sub(r"(?<=\d):(?=\d)", "\0", text)  # keep clock times whole
    return " ".join(re.sub(r"[^a-z0-9\0]+", " ", text).split()).replace("\0", ":")


def phrase_match(reply: str, accept: tuple[str, ...] | list[str]) -> bool:
    """Whether one of the ``accept`` phrases occurs in ``reply`` as whole words (both normalised)."""
    body = f" {normalize_text(reply)} "
    return any(f" {normalize_text(a)} " in body for a in accept)


def number_match(predicted: str | None, expected: int) -> bool:
    """Whether a predicted answer (``cot.normalize_number`` form, or None) is the expected integer."""
    from rlhfkit.apps.cot import normalize_number

    return predicted is not None and normalize_number(predicted) == str(expected)


def accuracy(correct: list[bool], no_fit: int = 0) -> dict:
    """{"correct", "n", "accuracy", "lo", "hi", "no_fit"}: the share right with its 95% Wilson interval."""
    from rlhfkit.eval.metrics import wilson_interval

    n, k = len(correct), sum(correct)
    p = k / n if n else 0.0
    lo, hi = wilson_interval(p, n)
    return {"correct": k, "n": n, "accuracy": p, "lo": lo, "hi": hi, "no_fit": no_fit}


# ---- running a model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    answer_tokens: int = 40  # replies of plain, closed-book and rag
    reasoning_tokens: int = 128  # replies of cot and pal
    k: int = 3  # documents retrieved for rag
    pal_timeout_s: float = 5.0


def greedy_replies(engine, conversations: list[list[dict]], max_tokens: int, stop: tuple[str, ...] = ()) -> list[str | None]:
    """The engine's greedy reply to each conversation, in order, batched (prompts of similar length
    together); None for a prompt that leaves no room for ``max_tokens`` in the context window."""
    from rlhfkit.serve.engine import Sampling

    prompts = [engine.chat_prompt(c) for c in conversations]
    lengths = [len(engine.encode(p)) for p in prompts]
    fits = sorted((i for i, n in enumerate(lengths) if n + max_tokens <= engine.context_window), key=lambda i: lengths[i])
    texts = engine.complete([prompts[i] for i in fits], Sampling(max_tokens=max_tokens, temperature=0.0, stop=stop))
    out: list[str | None] = [None] * len(prompts)
    for i, text in zip(fits, texts):
        out[i] = text
    return out


Generate = Callable[[list[list[dict]], int, tuple[str, ...]], list[str | None]]
"""(conversations, max new tokens, stop strings) → a reply to each, None where the prompt does not fit."""


def engine_generate(engine) -> Generate:
    return lambda conversations, max_tokens, stop=(): greedy_replies(engine, conversations, max_tokens, stop)


def run_method(generate: Generate, method: str, items: list, settings: Settings, index=None,
               fits: Callable[[list[dict]], bool] | None = None) -> list[dict]:
    """One record per item: the question, the reply, what was read from it, whether it is right.
    ``index`` (a ``rag.RagIndex``) and ``fits`` (does a prompt leave room for the reply) serve rag."""
    from rlhfkit.apps import cot, pal, rag

    if method in ("plain", "cot", "pal"):
        build = {"plain": cot.plain_messages, "cot": cot.cot_messages, "pal": pal.pal_messages}[method]
        budget = settings.answer_tokens if method == "plain" else settings.reasoning_tokens
        # PAL's reply is one fenced program: stop at its closing fence (the opening one has no newline before it)
        replies = generate([build(p.question) for p in items], budget, ("\n```",) if method == "pal" else ())
        records = []
        for p, reply in zip(items, replies):
            rec = {"id": p.id, "question": p.question, "expected": p.answer, "reply": reply}
            if reply is not None and method == "pal":
                code = pal.extract_program(reply)
                run = pal.run_program(code, timeout_s=settings.pal_timeout_s) if code else None
                rec["predicted"] = run.answer if run else None
                rec["note"] = "no solution() in the reply" if run is None else run.reason() or "ran"
            elif reply is not None:
                rec["predicted"] = cot.extract_answer(reply)
            rec["correct"] = reply is not None and number_match(rec.get("predicted"), p.answer)
            records.append(rec)
        return records
    if method == "closed-book":
        conversations = [[{"role": "system", "content": CLOSED_BOOK_SYSTEM}, {"role": "user", "content": q.question}]
                         for q in items]
        shown = [[] for _ in items]
    elif method == "rag":
        conversations, shown = [], []
        for q in items:
            hits = index.search(q.question, settings.k)
            messages = rag.rag_messages(q.question, hits, fits)
            conversations.append(messages)
            shown.append(hits[: messages[1]["content"].count('<document n="')])
    else:
        raise RlhfkitError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    replies = generate(conversations, settings.answer_tokens, ())
    records = []
    for q, reply, hits in zip(items, replies, shown):
        rec = {"id": q.id, "question": q.question, "expected": q.answer, "reply": reply,
               "correct": reply is not None and phrase_match(reply, q.accept)}
        if method == "rag":
            rec["shown"] = [h.chunk.cite() for h in hits]
            rec["retrieved"] = any(h.chunk.source == q.source for h in hits)
        records.append(rec)
    return records


def summarize(records: list[dict]) -> dict:
    out = accuracy([r["correct"] for r in records], no_fit=sum(r["reply"] is None for r in records))
    if records and "retrieved" in records[0]:
        out["retrieval_hits"] = sum(r["retrieved"] for r in records)
    return out


# ---- printing -----------------------------------------------------------------------------------------


def table(results: dict[str, dict]) -> str:
    """A Markdown table: one row per task and method, one column per model (accuracy, k/n, interval)."""
    models = list(results)
    rows = ["| task | method | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    methods = [m for m in METHODS if any(m in results[name] for name in models)]
    for method in methods:
        cells = []
        for name in models:
            s = results[name].get(method, {}).get("summary")
            if s is None:
                cells.append("—")
                continue
            cell = f"{s['accuracy']:.0%} ({s['correct']}/{s['n']}) [{s['lo']:.0%}, {s['hi']:.0%}]"
            if "retrieval_hits" in s:
                cell += f", retrieved {s['retrieval_hits']}/{s['n']}"
            if s["no_fit"]:
                cell += f", {s['no_fit']} did not fit"
            cells.append(cell)
        rows.append(f"| {TASKS[method]} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def examples(records: list[dict], n: int = 2) -> list[dict]:
    """Up to ``n`` records to show: the first right one (if any), then the first wrong ones, in file order."""
    right = [r for r in records if r["correct"]][:1]
    wrong = [r for r in records if not r["correct"]]
    return sorted(right + wrong[: max(n - len(right), 0)], key=records.index)[:n]


def transcript(record: dict, width: int = 600) -> str:
    reply = record["reply"]
    reply = "(the prompt did not fit the context window)" if reply is None else reply.strip()
    if len(reply) > width:
        reply = reply[:width] + " …"
    lines = [f"Q [{record['id']}]: {record['question']}", "reply: " + reply.replace("\n", "\n       ")]
    extra = {k: record[k] for k in ("predicted", "note", "shown") if k in record}
    extra.update(expected=record["expected"], correct=record["correct"])
    lines.append("  " + "; ".join(f"{k}: {v}" for k, v in extra.items()))
    return "\n".join(lines)
