"""Two benchmark processes taking turns, one update each, through a pair of FIFOs (stdlib only: TRL's venv imports it).

``bench/algos.py --interleave`` runs rlhfkit and TRL at once, lock-stepped: a side waits for its turn, runs one
update, then hands the turn over, so exactly one of them computes at any moment and update i of one side runs
between updates i and i + 1 of the other. The machine's speed drifts by up to a third within an hour here (other
tenants, clocks); two sides timed minutes apart see different machines, two sides taking turns see the same one.
While a side waits it uses no CPU, so its CPU-clock step times are untouched; its wall-clock timer restarts after
the wait.

A side that is done hands over ``b"E"`` instead of ``b"T"``: the other goes on alone. A side whose partner stays
silent past ``timeout`` seconds (it crashed, or hangs) goes on alone too, so one failure cannot hang the other.
"""

from __future__ import annotations

import os
import select


class Turns:
    """This side's end of the pair: ``wait()`` for the turn, ``give()`` it to the other side."""

    def __init__(self, mine: str, theirs: str, timeout: float = 300.0):
        # O_RDWR: opening a FIFO this way does not block until the other side opens it (Linux), and writes to it
        # succeed after the other side has exited
        self.mine, self.theirs = os.open(mine, os.O_RDWR), os.open(theirs, os.O_RDWR)
        self.timeout = timeout
        self.alone = False

    def wait(self) -> None:
        if self.alone:
            return
        ready, _, _ = select.select([self.mine], [], [], self.timeout)
        if not ready or os.read(self.mine, 1) == b"E":
            self.alone = True

    def give(self, last: bool = False) -> None:
        os.write(self.theirs, b"E" if last else b"T")
        self.alone = self.alone or last  # after its last update a side has nothing to wait for


def from_env() -> Turns | None:
    """The Turns named by ``RLHFKIT_TURNS`` ("mine:theirs", FIFO paths), or None when it is not set."""
    spec = os.environ.get("RLHFKIT_TURNS")
    if not spec:
        return None
    mine, theirs = spec.split(":")
    return Turns(mine, theirs)


# TRL's side: the peers' StepTimer (../shared/peers/trl/_common.py) patched to take turns around each update —
# waiting before the first, handing over and waiting again after each (on_step_end); the timer restarts after a wait.
TRL_PRELUDE = (
    "import sys, time; sys.path.insert(0, {bench!r}); import turns as _turns, _common; _T = _turns.from_env(); "
    "_begin, _end = _common.StepTimer.on_train_begin, _common.StepTimer.on_step_end\n"
    "def _on_train_begin(self, *a, **k):\n"
    "    _T.wait(); _begin(self, *a, **k)\n"
    "def _on_step_end(self, *a, **k):\n"
    "    _end(self, *a, **k); _T.give(last=a[1].global_step >= a[1].max_steps); _T.wait(); self.t_last = time.perf_counter()\n"
    "_common.StepTimer.on_train_begin, _common.StepTimer.on_step_end = _on_train_begin, _on_step_end\n"
)
