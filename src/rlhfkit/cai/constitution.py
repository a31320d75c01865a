"""The constitution: the principles that govern critique, revision and AI comparison.

Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback": instead of human labels, a
short list of principles steers the model; for each critique, revision and comparison one
principle is drawn at random (their §3.1 and §4.1), so that no single wording dominates.

File format (YAML)::

    name: rlhfkit-default
    version: 1
    principles:
      - id: harmless
        critique_request: Identify specific ways in which the reply is harmful ...
        revision_request: Rewrite the reply to remove anything harmful ...
        comparison_question: Which of these replies is less harmful? ...

The texts are plain instructions; the prompts around them (the request, the reply, the critique,
the options (A)/(B)) are built by :mod:`rlhfkit.cai.revise` and :mod:`rlhfkit.cai.ai_labeler`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data.errors import RlhfkitError

DEFAULT = "default"
"""The alias of the constitution shipped with rlhfkit (``defaults/constitution.yaml``)."""

PRINCIPLE_FIELDS = ("id", "critique_request", "revision_request", "comparison_question")


@dataclass(frozen=True)
class Principle:
    """One principle: the three requests made in its name."""

    id: str
    critique_request: str  # asked after the request and the reply: what is wrong with the reply?
    revision_request: str  # asked after the critique: rewrite the reply
    comparison_question: str  # asked with two replies shown as (A) and (B): which is better?


@dataclass(frozen=True)
class Constitution:
    name: str
    version: str
    principles: tuple[Principle, ...]
    source: str  # the file it was read from

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.principles]

    def get(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise RlhfkitError(f"{self.source}: no principle with id {principle_id!r} (have {self.ids})")


def default_path() -> Path:
    from rlhfkit import defaults

    return defaults.HERE / "constitution.yaml"


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RlhfkitError(f"{where} must be non-empty text, got {value!r}")
    return " ".join(value.split())  # YAML folded blocks keep stray newlines/indents; one line reads best in a prompt


def parse_constitution(data, source: str) -> Constitution:
    """A :class:`Constitution` from the parsed YAML ``data``; errors name ``source`` and the field."""
    if not isinstance(data, dict):
        raise RlhfkitError(f"{source}: a constitution must be a mapping with name, version and principles")
    unknown = sorted(set(data) - {"name", "version", "principles"})
    if unknown:
        raise RlhfkitError(f"{source}: unknown field(s) {unknown}; a constitution has name, version, principles")
    for key in ("name", "version", "principles"):
        if key not in data:
            raise RlhfkitError(f"{source}: field '{key}' is missing")
    name = _text(data["name"], f"{source}: field 'name'")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, (int, float, str)) or not str(version).strip():
        raise RlhfkitError(f"{source}: field 'version' must be a number or text, got {version!r}")
    items = data["principles"]
    if not isinstance(items, list) or not items:
        raise RlhfkitError(f"{source}: field 'principles' must be a non-empty list")
    principles, seen = [], set()
    for i, item in enumerate(items):
        where = f"{source}: principles[{i}]"
        if not isinstance(item, dict):
            raise RlhfkitError(f"{where} must be a mapping with fields {list(PRINCIPLE_FIELDS)}")
        unknown = sorted(set(item) - set(PRINCIPLE_FIELDS))
        if unknown:
            raise RlhfkitError(f"{where}: unknown field(s) {unknown}; want {list(PRINCIPLE_FIELDS)}")
        for key in PRINCIPLE_FIELDS:
            if key not in item:
                raise RlhfkitError(f"{where}: field '{key}' is missing")
        raw = dict(item)
        if isinstance(raw["id"], int) and not isinstance(raw["id"], bool):
            raw["id"] = str(raw["id"])  # `id: 1` is a fine id
        values = {key: _text(raw[key], f"{where}.{key}") for key in PRINCIPLE_FIELDS}
        if values["id"] in seen:
            raise RlhfkitError(f"{where}.id: duplicate id {values['id']!r}")
        seen.add(values["id"])
        principles.append(Principle(**values))
    return Constitution(name=name, version=str(version), principles=tuple(principles), source=source)


def draw_principles(constitution: Constitution, n: int, *, seed: int, key: str) -> list[Principle]:
    """``n`` principles drawn uniformly at random (with replacement, as Bai et al. draw one per step).

    The generator is seeded by (``seed``, ``key``), not by call order: the prompt with id ``key``
    gets the same principles whatever else is in the batch or the run.
    """
    import hashlib

    import numpy as np

    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    return [constitution.principles[int(i)] for i in rng.integers(0, len(constitution.principles), size=n)]


def load_constitution(path: str | Path = DEFAULT) -> Constitution:
    """Read a constitution YAML file (``"default"`` = the one shipped with rlhfkit)."""
    import yaml

    file = default_path() if str(path) == DEFAULT else Path(path).expanduser()
    if not file.exists():
        raise RlhfkitError(f"{file}: constitution file does not exist")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise RlhfkitError(f"{file}: not valid YAML ({exc})") from None
    return parse_constitution(data, str(file))
