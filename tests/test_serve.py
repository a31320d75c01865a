"""`rlhfkit serve` on a tiny model: the real `openai` client and LangChain's ChatOpenAI against the real
command in a subprocess, answers checked against the model's own greedy generation (transformers,
no server), errors in OpenAI's shape; the batching and stop-string logic on their own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

KEY = "sk-test-key"
NAME = "tiny-served"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sharp_llama(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama with large random weights: its greedy replies differ from prompt to prompt (at the usual
    0.02 init every greedy reply is the same token repeated, which would let a mixed-up batch pass)."""
    import torch

    from rlhfkit.models.load import load_policy

    model, tok = load_policy(str(tiny_llama))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("sharp")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(sharp_llama):
    """`python -m rlhfkit serve` on the tiny Llama, with an API key from the environment."""
    port = _free_port()
    env = {**os.environ, "RLHFKIT_SERVE_API_KEY": KEY, "RLHFKIT_SERVE_BATCH_WAIT_MS": "50",
           "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rlhfkit", "serve", "--model", str(sharp_llama), "--name", NAME, "--port", str(port),
           "--max-batch", "8", "--dtype", "float32", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/v1/models", headers={"authorization": f"Bearer {KEY}"}, timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"rlhfkit serve exited: {proc.stdout.read()}")
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("rlhfkit serve did not start within 90 s")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def greedy(sharp_llama):
    """The model's own greedy continuation of a chat (transformers' generate, no server): what the server must say."""
    import torch

    from rlhfkit.models.load import load_policy

    model, tok = load_policy(str(sharp_llama))

    def run(messages: list[dict] | str, max_new_tokens: int) -> str:
        text = messages if isinstance(messages, str) else tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    return run


def _client(base: str, **kw):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key=kw.pop("api_key", KEY), max_retries=0, **kw)


CHAT = [{"role": "user", "content": "hello the cat runs"}]


def test_openai_client_chat_plain_and_streamed(server, greedy):
    client = _client(server)
    expected = greedy(CHAT, 12)
    r = client.chat.completions.create(model=NAME, messages=CHAT, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == expected
    assert r.choices[0].message.role == "assistant"
    assert r.model == NAME and r.object == "chat.completion"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    stream = client.chat.completions.create(model=NAME, messages=CHAT, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == expected
    assert len([p for p in pieces if p]) > 1  # token by token, not one blob
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_langchain_chat_openai_plain_and_streamed(server, greedy):
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{server}/v1", api_key=KEY, model=NAME, temperature=0, max_tokens=10, max_retries=0)
    messages = [SystemMessage("you are kind"), HumanMessage("why does the dog run?")]
    expected = greedy([{"role": "system", "content": "you are kind"}, {"role": "user", "content": "why does the dog run?"}], 10)
    assert llm.invoke(messages).content == expected
    assert "".join(chunk.content for chunk in llm.stream(messages)) == expected


def test_completions_endpoint_continues_raw_text(server, greedy):
    client = _client(server)
    r = client.completions.create(model=NAME, prompt="the dog sees a", max_tokens=8, temperature=0)
    assert r.choices[0].text == greedy("the dog sees a", 8)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=NAME, prompt="the dog sees a", max_tokens=8, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text


def test_concurrent_requests_each_get_their_own_answer(server, greedy):
    # 8 different prompts at once: they share batches (left-padded), yet each gets what it would alone
    prompts = [f"why does the {w} run" for w in ("cat", "dog", "bird", "child", "friend", "teacher", "sun", "moon")]
    client, answers = _client(server), {}

    def ask(p):
        r = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": p}], max_tokens=10,
                                           temperature=0)
        answers[p] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == {p: greedy([{"role": "user", "content": p}], 10) for p in prompts}


def test_stop_sequence_and_length_limit(server, greedy):
    client = _client(server)
    full = greedy(CHAT, 16)
    stop = full[5:8]  # worked out from the greedy text: the reply must end right before its first occurrence
    r = client.chat.completions.create(model=NAME, messages=CHAT, max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].message.content == full[: full.find(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=NAME, messages=CHAT, max_tokens=16, temperature=0, stop=[stop], stream=True) if c.choices)
    assert streamed == full[: full.find(stop)]
    r = client.chat.completions.create(model=NAME, messages=CHAT, max_tokens=3, temperature=0)
    if r.choices[0].finish_reason == "length":  # (unless the model said EOS within 3 tokens)
        assert r.usage.completion_tokens == 3


def test_seeded_sampling_repeats_and_n_choices(server):
    client = _client(server)
    kw = dict(model=NAME, messages=CHAT, max_tokens=12, temperature=1.0, seed=123, n=3)
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert len({c.message.content for c in a.choices}) > 1  # three samples, not one copied


def test_models_and_errors_in_openai_shape(server):
    import openai

    client = _client(server)
    assert [m.id for m in client.models.list().data] == [NAME]
    with pytest.raises(openai.AuthenticationError) as e:
        _client(server, api_key="sk-wrong").models.list()
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=CHAT, temperature=3)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=CHAT, tools=[{"type": "function", "function": {"name": "f"}}])
    assert e.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as e:  # the tiny model's context window is 512 tokens
        client.chat.completions.create(model=NAME, messages=CHAT, max_tokens=600)
    assert e.value.code == "context_length_exceeded"
    r = httpx.post(f"{server}/v1/embeddings", headers={"authorization": f"Bearer {KEY}"}, json={})
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(f"{server}/v1/models", headers={"authorization": f"Bearer {KEY}", "host": "evil.example"})
    assert r.status_code == 400  # DNS rebinding: a page on another host name cannot drive the model
    r = httpx.post(f"{server}/v1/completions", headers={"authorization": f"Bearer {KEY}"}, content=b"x" * 2_000_000)
    assert r.status_code == 413 and "error" in r.json()


# ---- the parts on their own ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_llama):
    from rlhfkit.serve.app import build_engine

    return build_engine(str(tiny_llama), device="cpu", dtype="float32", max_batch=4, max_tokens=8)


def test_row_reader_holds_back_a_possible_stop_and_cuts_at_it(engine):
    from rlhfkit.serve.engine import Job, RowReader, Sampling

    tok = engine.tokenizer
    ids = tok("the cat sees the dog", add_special_tokens=False)["input_ids"]
    pieces: list[str] = []
    job = Job([1], Sampling(max_tokens=50, stop=("sees the d",)), on_text=pieces.append)
    reader = RowReader(tok, [job], engine.stop_ids)
    for t in ids:
        if reader([0], [t]) == [0]:
            break
    assert job.text == "the cat " and job.finish_reason == "stop"
    assert "".join(pieces) == "the cat "  # 'sees the' was held back, never sent, then dropped


def test_worker_batches_requests_that_arrive_together(engine):
    from rlhfkit.serve.batching import BatchWorker
    from rlhfkit.serve.engine import Job, Sampling

    sizes: list[int] = []
    real = engine.run_batch
    engine.run_batch = lambda jobs: (sizes.append(len(jobs)), real(jobs))
    try:
        worker = BatchWorker(engine, wait_s=0.05)
        greedy, hot = Sampling(max_tokens=4, temperature=0), Sampling(max_tokens=4, temperature=1.0)
        jobs = [Job(engine.encode(f"the cat {i}"), greedy if i < 6 else hot) for i in range(8)]
        worker.submit(jobs)  # queued before the thread starts: all waiting together
        worker.start()
        for j in jobs:
            assert j.done.wait(60) and j.error is None
        worker.stop()
    finally:
        del engine.run_batch
    # max_batch 4: six greedy rows in batches of 4 and 2, the two sampled ones (another distribution) apart
    assert sorted(sizes) == [2, 2, 4]
