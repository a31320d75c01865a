"""New tokens/s of `rlhfkit serve` at 1 and at 8 concurrent clients, and the ratio between them.

    python bench/serve.py                                   # smollm2, float32, 1 and 8 clients
    python bench/serve.py --model runs/demo --clients 1,4,8 --requests 16 --max-tokens 64

The real command runs in a subprocess (`python -m rlhfkit serve`, batching up to --max-batch requests);
each client is a thread with the real `openai` client sending chat requests one after another, each
prompt a different one of rlhfkit's shipped train prompts, temperature 0.7, at most --max-tokens new
tokens, no seed (a request's seed makes it batch only with requests of the same seed). New tokens are
the server's own count (``usage.completion_tokens``, EOS
included); tokens/s = all new tokens / wall seconds from the first request sent to the last answer.
A run with C clients sends C × --requests requests. The two settings run one after the other on the same
server, then again in the opposite order (1 8 8 1), and the ratio is taken within each pair: other
processes on the machine move absolute figures a lot.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from generate import cpu_description

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SRC = Path(__file__).resolve().parents[1] / "src"


def start_server(model: str, port: int, max_batch: int, dtype: str) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "rlhfkit", "serve", "--model", model, "--name", "bench", "--port", str(port),
           "--max-batch", str(max_batch), "--dtype", dtype, "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.5)
        if proc.poll() is not None:
            sys.exit("the server exited")
    proc.kill()
    sys.exit("the server did not start in 900 s")


def run_clients(base: str, prompts: list[str], clients: int, requests: int, max_tokens: int) -> tuple[int, float]:
    """(new tokens, seconds) for ``clients`` threads each sending ``requests`` chat requests in turn."""
    from openai import OpenAI

    client = OpenAI(base_url=base, api_key="none", max_retries=0, timeout=3600)
    tokens = [0] * clients

    def work(c: int) -> None:
        for r in range(requests):
            p = prompts[(c * requests + r) % len(prompts)]
            out = client.chat.completions.create(model="bench", messages=[{"role": "user", "content": p}],
                                                 max_tokens=max_tokens, temperature=0.7)
            tokens[c] += out.usage.completion_tokens

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(tokens), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--clients", default="1,8", help="two client counts, compared pairwise")
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--max-batch", type=int, default=8)
    args = ap.parse_args()
    low, high = (int(c) for c in args.clients.split(","))

    from rlhfkit import defaults

    prompts = [p.prompt for p in defaults.read_prompt_spec("default") if p.split == "train"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_server(args.model, port, args.max_batch, args.dtype)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        run_clients(base, prompts, 1, 1, 4)  # warm-up
        rates: dict[int, list[float]] = {low: [], high: []}
        for order in ((low, high), (high, low)):
            for c in order:
                n, sec = run_clients(base, prompts, c, args.requests, args.max_tokens)
                rates[c].append(n / sec)
                print(f"{c} client(s): {n} new tokens in {sec:.1f} s = {n / sec:.1f} tok/s", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    ratios = [h / lo for h, lo in zip(rates[high], rates[low])]
    print(f"\nmachine: {cpu_description()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"model {args.model}, {args.dtype}, max_batch {args.max_batch}, ≤{args.max_tokens} new tokens, "
          f"temperature 0.7, {args.requests} requests per client")
    for c in (low, high):
        print(f"  {c} client(s): {' / '.join(f'{r:.1f}' for r in rates[c])} new tok/s")
    print(f"  ratio {high}:{low} clients: {' / '.join(f'{r:.2f}×' for r in ratios)}")


if __name__ == "__main__":
    main()
