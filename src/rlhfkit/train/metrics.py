"""Metrics of every stage in one long-format CSV (``logs/metrics.csv``: stage, step, metric, value),
mirrored to TensorBoard (``logs/tb/STAGE``). Long format so stages with different metrics share it
and a resumed run can drop the rows after its checkpoint."""

from __future__ import annotations

import csv
import math
from pathlib import Path

FIELDS = ["stage", "step", "metric", "value"]


class MetricsLog:
    """Append metrics of one stage; ``resume_from(step)`` forgets rows of this stage after ``step``."""

    def __init__(self, run_dir: str | Path, stage: str, *, tensorboard: bool = True):
        self.path = Path(run_dir) / "logs" / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stage = stage
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path.parent / "tb" / stage))
            except ImportError:  # tensorboard is optional
                self._tb = None

    def start_fresh(self) -> None:
        """Drop every row of this stage (a forced re-run)."""
        self._rewrite(lambda row: row["stage"] != self.stage)

    def resume_from(self, step: int) -> None:
        """Keep this stage's rows up to ``step``: a resumed run re-logs what follows."""
        self._rewrite(lambda row: row["stage"] != self.stage or int(row["step"]) <= step)

    def _rewrite(self, keep) -> None:
        if not self.path.exists():
            return
        with self.path.open() as f:
            rows = [r for r in csv.DictReader(f) if keep(r)]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.path)

    def log(self, step: int, stats: dict[str, float]) -> None:
        """Append numeric ``stats``; every name must be documented in ``rlhfkit.metric_names`` (KeyError otherwise)."""
        from rlhfkit.metric_names import NOT_METRICS, metric

        stats = {name: value for name, value in stats.items() if name not in NOT_METRICS}
        for name in stats:
            metric(name)
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            if new:
                w.writeheader()
            for name, value in stats.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    w.writerow({"stage": self.stage, "step": step, "metric": name, "value": repr(float(value))})
                    if self._tb is not None and math.isfinite(value):
                        self._tb.add_scalar(name, value, step)
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path, stage: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """metric → [(step, value), …] in step order (of one stage if given)."""
    out: dict[str, list[tuple[int, float]]] = {}
    path = Path(path)
    if not path.exists():
        return out
    with path.open() as f:
        for row in csv.DictReader(f):
            if stage is None or row["stage"] == stage:
                out.setdefault(row["metric"], []).append((int(row["step"]), float(row["value"])))
    return {k: sorted(v) for k, v in out.items()}
