"""Rankings stored per second through FeedbackStore (SQLite file in a temporary folder, K=4).

    python bench/label.py [--tasks 300]

Two ways of writing, each by one writer and by four concurrent writer processes:
``submit``: submit_ranking only; ``assign+submit``: assign then submit, as a labeler process does.
Four writers each rank every task (overlap 4); the rate is all their rankings over the wall time
from the start signal to the last one finishing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

from rlhfkit.feedback.store import FeedbackStore

K = 4


def _marks(i: int) -> dict:
    return {f"c{j}": (i + j) % K + 1 for j in range(K)}


def _write(path: str, labeler: str, mode: str, n_tasks: int, ready=None, go=None) -> None:
    order = [f"c{j}" for j in range(K)]
    with FeedbackStore(path) as store:
        if ready is not None:
            ready.wait()  # everyone has imported and opened the store
            go.wait()
        if mode == "submit":
            for task_id in range(1, n_tasks + 1):
                store.submit_ranking(labeler, task_id, _marks(task_id), order, seconds_spent=1.0)
        else:
            while (a := store.assign(labeler)) is not None:
                store.submit_ranking(labeler, a.task.task_id, _marks(a.task.task_id), order, seconds_spent=1.0)


def _fresh_store(folder: Path, name: str, n_tasks: int, labelers: list[str]) -> str:
    path = str(folder / f"{name}.db")
    with FeedbackStore(path) as store:
        for labeler in labelers:
            store.add_labeler(labeler, "simulated")
        tasks = [(f"p{i}", f"prompt {i}", [(f"c{j}", f"completion {i}.{j}") for j in range(K)]) for i in range(n_tasks)]
        store.add_tasks(tasks, "helpful", overlap=len(labelers))
    return path


def bench(folder: Path, mode: str, writers: int, n_tasks: int) -> float:
    """Rankings stored per second."""
    labelers = [f"w{i}" for i in range(writers)]
    path = _fresh_store(folder, f"{mode}-{writers}", n_tasks, labelers)
    if writers == 1:
        start = time.perf_counter()
        _write(path, labelers[0], mode, n_tasks)
    else:
        ctx = multiprocessing.get_context("spawn")
        ready, go = ctx.Barrier(writers + 1), ctx.Event()
        procs = [ctx.Process(target=_write, args=(path, n, mode, n_tasks, ready, go)) for n in labelers]
        for p in procs:
            p.start()
        ready.wait()
        start = time.perf_counter()
        go.set()
        for p in procs:
            p.join()
        if any(p.exitcode != 0 for p in procs):
            raise SystemExit(f"a writer failed: exit codes {[p.exitcode for p in procs]}")
    seconds = time.perf_counter() - start
    with FeedbackStore(path) as store:
        stored = store.row_counts()["ranking"]
    assert stored == writers * n_tasks, (stored, writers * n_tasks)
    return stored / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300, help="tasks per writer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("submit", "assign+submit"):
            for writers in (1, 4):
                rate = bench(Path(tmp), mode, writers, args.tasks)
                print(f"{mode:14s} writers={writers}  {args.tasks * writers} rankings  {rate:.0f} rankings/s")


if __name__ == "__main__":
    main()
