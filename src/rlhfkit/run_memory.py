"""What a run directory remembers: a later stage starts from the run's own prompts, model and sampling.

``rlhfkit ppo`` and ``rlhfkit eval`` run by hand take these from ``RUN_DIR/config.yaml`` (their own
section if they ran before, else the stage upstream of them), so forgetting ``--prompts`` never
silently trains or evaluates on the shipped prompts. ``ppo --resume`` starts from the checkpoint's own
config (``RUN_DIR/policy/config.yaml``): the continued run is the run that was started. A value given
on the command line or in ``--config`` still wins, and the command says so when it differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.config import field_types, nested_configs, read_yaml
from rlhfkit.data.errors import RlhfkitError

IDENTITY = ("model", "prompts", "system_prompt", "max_new_tokens", "temperature", "top_p", "top_k")
"""What a run *is*: later stages inherit these (never how to run: device, batch sizes, force…)."""

SOURCES = {"ppo": ("ppo", "generate"), "eval": ("eval", "ppo", "generate")}
"""Stage → the config.yaml sections it inherits from, first match wins."""

NEVER = ("run_dir", "resume", "force", "device")
"""Not inherited even on --resume: they say where and how to run, not what."""

# ppo and eval sample from the full distribution; a greedy or truncated generate setting is not carried over
_FULL_DISTRIBUTION = {"temperature": lambda v: v > 0, "top_p": lambda v: v == 1, "top_k": lambda v: v == 0}


@dataclass
class Remembered:
    """Flat field → value the run recorded, and field → where it was read (for messages)."""

    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    resumed_from: str | None = None

    def notes(self, explicit: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
        """Lines for stderr: what was taken from the run, and each given value that differs from the run's."""
        lines = []
        differs = [k for k in explicit if k in self.values and explicit[k] != self.values[k]]
        for k in differs:
            lines.append(f"note: {k} = {explicit[k]!r} differs from this run's {self.values[k]!r} "
                         f"({self.origin[k]}); using {explicit[k]!r}")
        if self.resumed_from:
            lines.insert(0, f"resuming with the settings of {self.resumed_from}")
            return lines
        taken = {k: v for k, v in self.values.items() if k not in explicit and v != defaults.get(k)}
        if taken:
            by_origin: dict[str, list[str]] = {}
            for k, v in taken.items():
                by_origin.setdefault(self.origin[k], []).append(f"{k}={v!r}")
            lines.insert(0, "; ".join(f"from {where}: {', '.join(items)}" for where, items in by_origin.items())
                         + " (give an option to change it)")
        return lines


def flat_values(cls: type, data: dict) -> dict[str, Any]:
    """A saved config section (nested ``sampling: {...}``) as flat field → value, known fields only."""
    types, nested = field_types(cls), nested_configs(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in nested and isinstance(value, dict):
            out.update({k: v for k, v in value.items() if k in types})
        elif key in types:
            out[key] = value
    return out


def remembered(stage: str, cls: type, run_dir: str | Path, *, resume: bool = False) -> Remembered:
    """The values ``stage`` takes from the run in ``run_dir`` (nothing for a new run or another stage)."""
    run_dir = Path(run_dir)
    if stage == "ppo" and resume:
        path = run_dir / "policy" / "config.yaml"
        if not path.exists():
            raise RlhfkitError(f"{run_dir / 'policy'}: no checkpoint to resume from")
        data = read_yaml(path) or {}
        values = {k: v for k, v in flat_values(cls, data).items() if k not in NEVER}
        return Remembered(values, {k: str(path) for k in values}, resumed_from=str(path))
    path = run_dir / "config.yaml"
    if stage not in SOURCES or not path.exists():
        return Remembered()
    data = read_yaml(path) or {}
    types = field_types(cls)
    out = Remembered()
    for section in SOURCES[stage]:
        saved = data.get(section)
        if not isinstance(saved, dict):
            continue
        for k, v in flat_values(cls, saved).items():
            if k in IDENTITY and k in types and k not in out.values:
                if k in _FULL_DISTRIBUTION and not _FULL_DISTRIBUTION[k](v):
                    continue
                out.values[k] = v
                out.origin[k] = f"{path} [{section}]"
    return out
