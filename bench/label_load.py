"""Load test of the labeling web app over loopback: many simulated labelers ranking at once, on
SQLite and on PostgreSQL.

    python bench/label_load.py [--labelers 100] [--per-labeler 20] [--backends sqlite,postgresql]
                               [--postgres postgresql://USER:PASSWORD@127.0.0.1:5432/DB]

The server is the real one (`rlhfkit label serve`, one process) on 127.0.0.1, its store a SQLite file
in a temporary folder or a fresh schema on the PostgreSQL server (``--postgres``, else
$RLHFKIT_TEST_POSTGRES, else the one `make postgres` sets up; a backend that cannot be reached is
reported and skipped unless named in --backends). Each simulated labeler is an async HTTP client with
its own cookie jar: it opens its invite link, signs in (POST /login with the page's pre-session
cookie), confirms the guideline with its CSRF token, then loops GET /api/task → POST /api/rankings
until it has its rankings acknowledged (201).

1. steady: all labelers at once. Throughput (acknowledged rankings per second of wall time) and the
   p50/p99 latency of the submit and of fetching a task are printed. Checked in the store afterwards:
   every acknowledged ranking is there with its marks (0 lost), no (labeler, task) twice and no
   ranking nobody acknowledged (0 duplicated). With --import-tasks N an admin meanwhile uploads N new
   tasks through /admin/import: its time and the labelers' submit latency during it are printed (a
   large import used to hold the write lock throughout; a busy database answers 503, retried here).
2. crash: a fresh store; once a third of the rankings are acknowledged the server gets SIGKILL and
   is started again on the same port; the clients retry through the outage. Checked: every ranking
   whose POST returned 2xx is in the store after the restart, and still no (labeler, task) twice.
   Rankings committed in the instant of the kill but never acknowledged may be stored; they are counted.

Everything is bounded: requests time out after 30 s, a phase gives up after --deadline seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from rlhfkit.feedback.label import ensure_guideline, open_store
from rlhfkit.feedback.pg_scratch import scratch_schema, unreachable
from rlhfkit.feedback.web.cli_support import invite
from rlhfkit.machine import cpu_line

K = 4
OVERLAP = 3
POSTGRES_DEFAULT = "postgresql://rlhfkit:rlhfkit@127.0.0.1:5432/rlhfkit_test"  # what `make postgres` creates


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, store: str, port: int) -> subprocess.Popen:
    log = open(run_dir / "server.log", "a")
    cmd = [sys.executable, "-m", "rlhfkit.cli", "label", "serve", "--run", str(run_dir), "--store", store,
           "--port", str(port)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


async def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while True:
            try:
                await c.get(f"{base}/static/app.css", timeout=1)
                return
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start; see server.log") from None
                await asyncio.sleep(0.05)


def prepare(run_dir: Path, store: str, labelers: int, per_labeler: int, base: str) -> dict[str, str]:
    """A store with the guideline, enough tasks that nobody runs out, and one invite link per labeler."""
    n_tasks = int(1.5 * labelers * per_labeler / OVERLAP)
    links = {f"u{i:03d}": invite(str(run_dir), store, f"u{i:03d}", base_url=base) for i in range(labelers)}
    with open_store(str(run_dir), store) as s:
        ensure_guideline(s)
        items = [(f"p{i}", f"prompt {i}", [(f"c{j}", f"reply {i}.{j}") for j in range(K)]) for i in range(n_tasks)]
        s.add_tasks(items, "helpful", overlap=OVERLAP)
    return links


class Tally:
    def __init__(self):
        self.acked: dict[int, tuple[str, int, dict]] = {}  # ranking_id → (labeler, task_id, marks)
        self.submit_s: list[float] = []
        self.submit_at: list[float] = []  # when each submit started (perf_counter)
        self.task_s: list[float] = []
        self.transport_errors = 0
        self.conflicts = 0
        self.busy = 0  # 503s (the database busy), retried after Retry-After


async def sign_in(c: httpx.AsyncClient, base: str, link: str) -> str:
    """Open the invite link, sign in as its page does; → the CSRF token (also set as a header)."""
    (await c.get(link.removeprefix(base))).raise_for_status()
    r = await c.post("/login", data={"token": link.split("token=")[1], "csrf": c.cookies["rlhfkit_login"]})
    if r.status_code != 303:
        raise RuntimeError(f"signing in → {r.status_code} {r.text}")
    c.headers["x-csrf-token"] = csrf = (await c.get("/api/me")).json()["csrf_token"]
    return csrf


async def labeler(base: str, name: str, link: str, n: int, tally: Tally, deadline: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        while True:  # sign in (retried: the server may be down at that moment in the crash phase)
            try:
                if "rlhfkit_session" not in c.cookies:  # signed in before the server was killed: the session lives on
                    await sign_in(c, base, link)
                csrf = c.headers["x-csrf-token"]
                r = await c.post("/guideline/confirm", data={"version": 1, "csrf": csrf})
                if r.status_code != 303:
                    raise RuntimeError(f"{name}: confirming the guideline → {r.status_code} {r.text}")
                break
            except httpx.TransportError:
                tally.transport_errors += 1
                await asyncio.sleep(0.2)
        done = 0
        while done < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: {done}/{n} rankings acknowledged at the deadline")
            try:
                t0 = time.perf_counter()
                r = await c.get("/api/task")
                tally.task_s.append(time.perf_counter() - t0)
                if r.status_code == 503:
                    tally.busy += 1
                    await asyncio.sleep(float(r.headers["retry-after"]))
                    continue
                r.raise_for_status()
                task = r.json()["task"]
                if task is None:
                    raise RuntimeError(f"{name}: no task left after {done} rankings")
                marks = {comp["completion_id"]: int(m) for comp, m in zip(task["completions"], rng.permutation(K) + 1)}
                t0 = time.perf_counter()
                r = await c.post("/api/rankings", json={"task_id": task["task_id"], "marks": marks})
                tally.submit_s.append(time.perf_counter() - t0)
                tally.submit_at.append(t0)
            except httpx.TransportError:  # the server is down: try again shortly
                tally.transport_errors += 1
                await asyncio.sleep(0.2)
                continue
            if r.status_code == 201:
                tally.acked[r.json()["ranking_id"]] = (name, task["task_id"], marks)
                done += 1
            elif r.status_code == 409:  # e.g. this task's ranking was stored but its answer lost in a crash
                tally.conflicts += 1
            elif r.status_code == 503:
                tally.busy += 1
                await asyncio.sleep(float(r.headers["retry-after"]))
            else:
                raise RuntimeError(f"{name}: POST /api/rankings → {r.status_code} {r.text}")


async def import_tasks(base: str, link: str, n_tasks: int) -> dict:
    """An admin uploads ``n_tasks`` new tasks of K completions through /admin/import, as a person would."""
    rows = ({"prompt_id": f"import{i}", "completion_id": f"import{i}.{j}", "text": f"imported reply {i}.{j}",
             "prompt": f"imported prompt {i}"} for i in range(n_tasks) for j in range(K))
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    async with httpx.AsyncClient(base_url=base, timeout=600) as c:
        csrf = await sign_in(c, base, link)
        t0 = time.perf_counter()
        r = await c.post("/admin/import", files={"file": ("import.jsonl", data, "application/json")},
                         data={"overlap": "1", "csrf": csrf})
        return {"start": t0, "end": time.perf_counter(), "mb": len(data) / 1e6, "status": r.status_code}


def check_store(run_dir: Path, store: str, tally: Tally) -> dict:
    with open_store(str(run_dir), store, must_exist=True) as s:
        rows = s.history()
    stored = {r.ranking_id: r for r in rows}
    lost = [rid for rid, acked in tally.acked.items()
            if rid not in stored or (stored[rid].labeler, stored[rid].task_id, stored[rid].marks) != acked]
    twice = [key for key, n in Counter((r.labeler, r.task_id) for r in rows).items() if n > 1]
    return {"stored": len(rows), "acknowledged": len(tally.acked), "lost": len(lost), "duplicated": len(twice),
            "unacknowledged": len(set(stored) - set(tally.acked))}


def ms(xs: list[float], q: float) -> str:
    return f"{1000 * float(np.percentile(xs, q)):.0f} ms"


async def run_phase(args, run_dir: Path, store: str, crash: bool) -> tuple[dict, Tally, float]:
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    links = prepare(run_dir, store, args.labelers, args.per_labeler, base)
    admin_link = invite(str(run_dir), store, "admin", admin=True, base_url=base)
    proc = start_server(run_dir, store, port)
    tally = Tally()
    restarts, imported = [], None
    try:
        await wait_ready(base, proc)
        deadline = time.monotonic() + args.deadline
        start = time.perf_counter()
        clients = [asyncio.create_task(labeler(base, name, link, args.per_labeler, tally, deadline, i))
                   for i, (name, link) in enumerate(links.items())]
        if args.import_tasks and not crash:
            await asyncio.sleep(2)  # under way
            imported = await import_tasks(base, admin_link, args.import_tasks)
        if crash:
            target = args.labelers * args.per_labeler // 3
            while len(tally.acked) < target and not all(c.done() for c in clients):
                await asyncio.sleep(0.01)
            acked_at_kill = len(tally.acked)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            t_kill = time.perf_counter()
            proc = start_server(run_dir, store, port)
            await wait_ready(base, proc)
            restarts.append((acked_at_kill, time.perf_counter() - t_kill))
        await asyncio.gather(*clients)
        wall = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = check_store(run_dir, store, tally)
    if restarts:
        result["killed_after_acks"], result["down_s"] = restarts[0][0], round(restarts[0][1], 2)
    result["import"] = imported
    return result, tally, wall


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labelers", type=int, default=100)
    parser.add_argument("--per-labeler", type=int, default=20)
    parser.add_argument("--backends", default="", help="sqlite,postgresql (default: both, PostgreSQL if reachable)")
    parser.add_argument("--postgres", default=os.environ.get("RLHFKIT_TEST_POSTGRES", POSTGRES_DEFAULT),
                        help="PostgreSQL server to test on (a fresh schema per phase)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = a free one)")
    parser.add_argument("--deadline", type=float, default=600, help="seconds a phase may take at most")
    parser.add_argument("--import-tasks", type=int, default=0,
                        help="in the steady phase, an admin imports this many new tasks while the labelers work")
    args = parser.parse_args()
    backends = args.backends.split(",") if args.backends else ["sqlite", "postgresql"]
    print(f"machine: {cpu_line()}; one server process (uvicorn), clients in this process; "
          f"{args.labelers} labelers × {args.per_labeler} rankings, K={K}, overlap {OVERLAP}")
    ok = True
    for backend in backends:
        if backend == "postgresql" and (why := unreachable(args.postgres)):
            print(f"== postgresql: {why}; `make postgres` starts one")
            ok = ok and not args.backends  # skipped only when not asked for by name
            continue
        for crash in (False, True):
            with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
                run_dir = Path(tmp)
                store = (str(run_dir / "feedback.db") if backend == "sqlite"
                         else stack.enter_context(scratch_schema(args.postgres, prefix="bench")))
                result, tally, wall = await run_phase(args, run_dir, store, crash)
            name = "crash (SIGKILL + restart mid-load)" if crash else "steady"
            print(f"== {backend}, {name}: {args.labelers} labelers × {args.per_labeler} rankings")
            n = len(tally.acked)
            print(f"   {n} rankings acknowledged in {wall:.1f} s = {n / wall:.0f} rankings/s")
            print(f"   POST /api/rankings p50 {ms(tally.submit_s, 50)}, p99 {ms(tally.submit_s, 99)};"
                  f" GET /api/task p50 {ms(tally.task_s, 50)}, p99 {ms(tally.task_s, 99)}")
            if imported := result.pop("import"):
                during = [dt for at, dt in zip(tally.submit_at, tally.submit_s) if imported["start"] <= at < imported["end"]]
                print(f"   import of {args.import_tasks} tasks ({imported['mb']:.1f} MB) → {imported['status']} in "
                      f"{imported['end'] - imported['start']:.1f} s; {len(during)} submits meanwhile: "
                      f"p50 {ms(during, 50)}, p99 {ms(during, 99)}, max {ms(during, 100)}")
            print(f"   store: {result}; transport errors retried {tally.transport_errors}, 409s {tally.conflicts}, "
                  f"503s {tally.busy}")
            expect_unacked = (lambda n: n <= args.labelers) if crash else (lambda n: n == 0)
            good = result["lost"] == 0 and result["duplicated"] == 0 and expect_unacked(result["unacknowledged"])
            good = good and len(tally.acked) == args.labelers * args.per_labeler
            print(f"   {'OK' if good else 'FAILED'}: {result['lost']} lost, {result['duplicated']} duplicated")
            ok = ok and good
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
