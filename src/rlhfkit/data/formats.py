"""Preference data from elsewhere: TRL and Anthropic HH-RLHF in, TRL out.

Pairs keep their prompt as plain text, whatever the source, so a reward model sees the same kind
of input everywhere. A dialogue is rendered by :func:`render_dialogue`:

- a prompt that is a single user message is that message's text, exactly like a prompt from
  ``prompts.jsonl``;
- anything longer (several turns, or a system message) becomes ``"Role: text"`` turns separated by
  a blank line: ``"User: Hi\\n\\nAssistant: Hello!\\n\\nUser: Tell me a joke"``. The final reply
  (``chosen``/``rejected``) is not part of the prompt, and no trailing ``"Assistant:"`` is added;
  how the reply is joined to the prompt is the reward model's business.

HH-RLHF dialogues (``"\\n\\nHuman: …\\n\\nAssistant: …"``) are parsed into turns (Human → user)
and rendered the same way, so an HH prompt and a TRL prompt of the same conversation are the
same text, and the reward model still sees the whole dialogue before the final reply.
"""

from __future__ import annotations

import re
from pathlib import Path

from rlhfkit.data.errors import RecordError
from rlhfkit.data.io import PathLike, iter_jsonl_dicts, read_pairs, write_jsonl
from rlhfkit.data.records import Pair

Message = dict[str, str]  # {"role": "user" | "assistant" | "system" | …, "content": text}


def render_dialogue(messages: list[Message]) -> str:
    """A dialogue as plain text: a lone user message as itself, else ``"Role: text"`` turns."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def _messages(value: object, field: str) -> list[Message]:
    """Validate a conversational field: a non-empty list of ``{"role", "content"}`` string dicts."""
    if not isinstance(value, list) or not value:
        raise RecordError(f"field '{field}' must be a string or a non-empty list of messages", field=field)
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RecordError(f"field '{field}[{i}]' must be a message object", field=field)
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise RecordError(f"field '{field}[{i}].{key}' must be a string", field=field)
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _text(value: object, field: str) -> str:
    """A TRL field as text: a string as is, a conversation rendered (a lone message: its content)."""
    if isinstance(value, str):
        return value
    messages = _messages(value, field)
    return messages[0]["content"] if len(messages) == 1 else render_dialogue(messages)


# ---------------------------------------------------------------- TRL


def trl_row_to_pair(row: dict) -> Pair:
    """One row of a TRL preference dataset → :class:`Pair` (``source="trl"``).

    Accepted: ``prompt``/``chosen``/``rejected`` as strings or as conversations (lists of
    ``{"role", "content"}``), and TRL's implicit-prompt form, where ``prompt`` is absent and
    ``chosen``/``rejected`` are whole conversations: their longest shared run of messages is the
    prompt (as TRL's ``extract_prompt`` does). An implicit prompt in plain strings is refused: a
    shared character prefix would cut words, not turns.
    """
    for name in ("chosen", "rejected"):
        if name not in row:
            raise RecordError(f"missing field '{name}'", field=name)
    if "prompt" in row:
        prompt = _text(row["prompt"], "prompt")
        chosen, rejected = _text(row["chosen"], "chosen"), _text(row["rejected"], "rejected")
    else:
        if isinstance(row["chosen"], str) or isinstance(row["rejected"], str):
            raise RecordError(
                "missing field 'prompt' (an implicit prompt needs conversational 'chosen' and 'rejected')",
                field="prompt",
            )
        c, r = _messages(row["chosen"], "chosen"), _messages(row["rejected"], "rejected")
        n = 0
        while n < min(len(c), len(r)) and c[n] == r[n]:
            n += 1
        if n == 0:
            raise RecordError("fields 'chosen' and 'rejected' share no prompt (first messages differ)", field="prompt")
        if n == len(c) or n == len(r):
            raise RecordError(
                "fields 'chosen' and 'rejected' have no different reply after the prompt", field="rejected"
            )
        prompt, chosen, rejected = render_dialogue(c[:n]), _text(c[n:], "chosen"), _text(r[n:], "rejected")
    return Pair.from_dict({"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": "trl"})


# ---------------------------------------------------------------- HH-RLHF

_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_split(dialogue: str, field: str) -> tuple[str, str]:
    """An HH dialogue → (everything before the final ``"\\n\\nAssistant:"``, the final reply)."""
    cut = dialogue.rfind(_HH_ASSISTANT)
    if cut < 0:
        raise RecordError(f"field '{field}' has no '\\n\\nAssistant:' turn", field=field)
    return dialogue[:cut], dialogue[cut + len(_HH_ASSISTANT) :].strip()


def _hh_turns(text: str) -> list[Message]:
    parts = _HH_TURN.split(text)  # [preamble, role, content, role, content, …]
    if parts[0].strip() or len(parts) < 3:
        raise RecordError("field 'chosen' does not start with a 'Human:' turn", field="chosen")
    return [
        {"role": _HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])
    ]


def hh_row_to_pair(row: dict) -> Pair:
    """One HH-RLHF row ``{"chosen": dialogue, "rejected": dialogue}`` → :class:`Pair` (``source="hh"``).

    Each dialogue is split at its last ``"\\n\\nAssistant:"``: the dialogue before it is the prompt
    (it must be the same in both, else the row is not a comparison of two replies), the text after
    it is the reply. The prompt is rendered by :func:`render_dialogue`.
    """
    texts = {}
    for name in ("chosen", "rejected"):
        if name not in row:
            raise RecordError(f"missing field '{name}'", field=name)
        if not isinstance(row[name], str):
            raise RecordError(f"field '{name}' must be str, got {type(row[name]).__name__}", field=name)
        texts[name] = _hh_split(row[name], name)
    (prompt_c, chosen), (prompt_r, rejected) = texts["chosen"], texts["rejected"]
    if prompt_c != prompt_r:
        raise RecordError(
            "fields 'chosen' and 'rejected' differ before their final Assistant reply (not one prompt)",
            field="rejected",
        )
    prompt = render_dialogue(_hh_turns(prompt_c))
    return Pair.from_dict({"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": "hh"})


# ---------------------------------------------------------------- files


def _read_rows(path: PathLike, convert, skipped: list[RecordError] | None) -> list[Pair]:
    pairs = []
    for line_no, row in iter_jsonl_dicts(path):
        try:
            pairs.append(convert(row))
        except RecordError as e:
            if skipped is None:
                raise e.at(str(path), line_no) from None
            skipped.append(e.at(str(path), line_no))
    return pairs


def read_trl(path: PathLike, *, skipped: list[RecordError] | None = None) -> list[Pair]:
    """Read a TRL preference JSONL (or ``.jsonl.gz``) file with :func:`trl_row_to_pair`.

    A bad row raises :class:`RecordError` at file:line, unless ``skipped`` is a list: then the
    error is appended to it and the row left out (public data sets have a few such rows).
    """
    return _read_rows(path, trl_row_to_pair, skipped)


def read_hh(path: PathLike, *, skipped: list[RecordError] | None = None) -> list[Pair]:
    """Read an HH-RLHF JSONL (or ``.jsonl.gz``) file with :func:`hh_row_to_pair`.

    ``skipped`` as in :func:`read_trl`. (Of the 1,500 rows of the harmless-base sample, 7 are bad:
    3 whose dialogues differ before the final reply, 4 with an empty reply.)
    """
    return _read_rows(path, hh_row_to_pair, skipped)


def load_pairs(spec: str, *, skipped: list[RecordError] | None = None) -> list[Pair]:
    """Pairs from ``"PATH"`` (our ``pairs.jsonl``), ``"trl:PATH"`` or ``"hh:PATH"``.

    ``skipped`` applies to the TRL and HH formats; our own pairs files are always read strictly.
    """
    kind, sep, rest = spec.partition(":")
    if sep and kind == "trl":
        return read_trl(rest, skipped=skipped)
    if sep and kind == "hh":
        return read_hh(rest, skipped=skipped)
    return read_pairs(spec)


def export_trl(pairs: list[Pair], path: PathLike) -> int:
    """Atomically write pairs as TRL's standard explicit-prompt format; returns the row count."""
    return write_jsonl(Path(path), ({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs))
