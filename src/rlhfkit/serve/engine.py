"""The model behind `rlhfkit serve` and `rlhfkit.apps`: load it, and generate for many requests at once.

Requests that share a sampling distribution (temperature, top-p, top-k, seed) share one call of
rlhfkit's own sampler (``generate.sample_ids``: the distribution is exactly what the request says,
never the checkpoint's generation_config, as in the generate and PPO stages). Their prompts are
left-padded into one batch, every row is read as it grows (``RowReader`` sees each new token of every
row before the next step), and a row ends on its own — at EOS, at one of its stop strings, at its own
token limit, or when its client goes away — while the others go on. This is static batching: a
request arriving mid-batch waits for the next one (``batching.BatchWorker``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.data.errors import RlhfkitError


@dataclass(frozen=True)
class Sampling:
    """How one request is sampled. temperature 0 = greedy; top_p 1 and top_k 0 = no truncation."""

    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def batch_key(self) -> tuple:
        """Rows of one sampler call share one distribution; stop strings and limits are per row."""
        greedy = self.temperature <= 0
        return (greedy, None if greedy else self.temperature, self.top_p, self.top_k, self.seed)


@dataclass
class Job:
    """One sequence to generate. The worker fills in text, tokens and finish_reason, then sets ``done``.

    ``on_text`` (optional) is called from the generating thread with each new piece of text, in order;
    ``on_done`` (optional) once it has ended (or failed: ``error``).
    """

    prompt_ids: list[int]
    sampling: Sampling
    on_text: Callable[[str], None] | None = None
    on_done: Callable[[], None] | None = None
    text: str = ""
    tokens: int = 0  # new tokens, EOS included
    finish_reason: str | None = None  # "stop" (EOS or a stop string) or "length"
    error: BaseException | None = None
    cancelled: bool = False  # set by the client's side: the row stops at the next step
    done: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.done.set()
        if self.on_done is not None:
            self.on_done()


@dataclass(frozen=True)
class Defaults:
    """What a request leaves out: how the policy was aligned (its PPO ``sampling`` section) where known."""

    system_prompt: str = ""
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0


def find_policy_dir(spec: str) -> Path | None:
    """RUN_DIR/policy for a run directory, the folder itself for a policy folder, else None (a model)."""
    from rlhfkit.models.policy import TRAINABLE_FILE

    path = Path(spec).expanduser()
    for folder in (path / "policy", path):
        if (folder / TRAINABLE_FILE).exists():
            return folder
    return None


def load_served(spec: str, *, device: str = "cpu", dtype: str = "float32", max_tokens: int = 256):
    """(model, tokenizer, Defaults, name) for a run directory / policy folder (LoRA merged, its sampling
    as defaults) or any model folder, hub id or 'smollm2' (the model's chat template, generic defaults)."""
    from rlhfkit.models.load import load_policy
    from rlhfkit.models.policy import load_aligned

    policy_dir = find_policy_dir(spec)
    if policy_dir is not None:
        model, tokenizer, config = load_aligned(policy_dir, device=device, dtype=dtype)
        s = config.get("sampling", {})
        defaults = Defaults(system_prompt=s.get("system_prompt", ""), max_tokens=max_tokens,
                            temperature=s.get("temperature", 0.7), top_p=s.get("top_p", 1.0), top_k=s.get("top_k", 0))
        folder = policy_dir.parent if policy_dir.name == "policy" else policy_dir
        name = folder.resolve().name
    else:
        model, tokenizer = load_policy(spec, device=device, dtype=dtype)
        defaults = Defaults(max_tokens=max_tokens)
        name = Path(spec).name if Path(spec).expanduser().exists() else spec
    return model, tokenizer, defaults, name


class Engine:
    """A causal LM, its tokenizer and defaults; ``run(jobs)`` generates for them, batched."""

    def __init__(self, model, tokenizer, *, name: str, defaults: Defaults = Defaults(), max_batch: int = 8):
        from rlhfkit.generate import eos_ids

        self.model, self.tokenizer, self.name, self.defaults, self.max_batch = model, tokenizer, name, defaults, max_batch
        self.stop_ids = eos_ids(tokenizer, model)
        self.context_window = int(getattr(model.config.get_text_config(), "max_position_embeddings", 2048))
        self._lock = threading.Lock()  # one sampler call at a time: the in-process apps and the server's worker

    # ---- prompts ------------------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict]) -> str:
        """The conversation through the model's chat template, ready for the assistant's turn.

        Without a system message the aligned policy's system prompt is used (how it was trained).
        """
        if self.defaults.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.defaults.system_prompt}, *messages]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def encode(self, text: str) -> list[int]:
        """Token ids of an already formatted prompt (a chat template adds its own special tokens)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def token_budget(self, n_prompt: int, max_tokens: int | None) -> int:
        """New tokens a request may have: its max_tokens (default: the server's), within the context window."""
        room = self.context_window - n_prompt
        if room < 1 or (max_tokens is not None and max_tokens > room):
            asked = f" + {max_tokens} new tokens" if max_tokens is not None else ""
            raise RlhfkitError(f"this model's context window is {self.context_window} tokens; the request has "
                               f"{n_prompt} prompt tokens{asked}")
        return max_tokens if max_tokens is not None else min(self.defaults.max_tokens, room)

    # ---- generation ---------------------------------------------------------------------------------

    def run(self, jobs: list[Job]) -> None:
        """Generate every job: those that can share a batch do, max_batch rows at a time."""
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.sampling.batch_key(), []).append(job)
        for group in groups.values():
            for lo in range(0, len(group), self.max_batch):
                self.run_batch(group[lo : lo + self.max_batch])

    def run_batch(self, jobs: list[Job]) -> None:
        """One sampler call for jobs sharing ``Sampling.batch_key``; each ends on its own (see RowReader)."""
        import torch

        from rlhfkit.generate import sample_ids

        s = jobs[0].sampling
        assert all(j.sampling.batch_key() == s.batch_key() for j in jobs), "rows of a batch share one distribution"
        reader = RowReader(self.tokenizer, jobs, self.stop_ids)
        try:
            with self._lock:
                if s.seed is not None:  # the request's seed, set in the lock: no other batch draws in between
                    torch.manual_seed(s.seed)
                sample_ids(self.model, self.tokenizer, [j.prompt_ids for j in jobs],
                           max_new_tokens=max(j.sampling.max_tokens for j in jobs),
                           temperature=max(s.temperature, 0.0), top_p=s.top_p, top_k=s.top_k, on_step=reader)
            reader.finish()
        except BaseException as exc:  # every waiting client hears of it
            for job in jobs:
                job.error = job.error or exc
            raise
        finally:
            for job in jobs:
                job.close()

    def complete(self, prompts: list[str], sampling: Sampling) -> list[str]:
        """Texts for already formatted prompts, in order (the in-process path the apps use)."""
        jobs = [Job(self.encode(p), sampling) for p in prompts]
        for j in jobs:
            self.token_budget(len(j.prompt_ids), sampling.max_tokens)
        self.run(jobs)
        return [j.text for j in jobs]

    def chat(self, conversations: list[list[dict]], sampling: Sampling) -> list[str]:
        """The assistant's reply to each conversation, in order."""
        return self.complete([self.chat_prompt(c) for c in conversations], sampling)


class RowReader:
    """The sampler's ``on_step``: reads each row's new token every step and decides, row by row, when it ends.

    Text is decoded from the row's whole token list (a byte-level BPE piece may be half a character),
    and text that might begin a stop string is held back until it cannot.
    """

    def __init__(self, tokenizer, jobs: list[Job], stop_ids: list[int]):
        self.tokenizer, self.jobs, self.stop_ids = tokenizer, jobs, set(stop_ids)
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.sent = [0] * len(jobs)  # characters of the decoded text already handed out

    def __call__(self, rows: list[int], tokens: list[int]) -> list[int]:
        """rows: batch indices that drew a token this step; tokens: those tokens. Returns the rows that end now."""
        ends = []
        for i, token in zip(rows, tokens):
            job = self.jobs[i]
            if job.finish_reason is None:
                self._step(i, job, token)
            if job.finish_reason is not None:
                ends.append(i)
        return ends

    def _step(self, i: int, job: Job, token: int) -> None:
        job.tokens += 1
        if token in self.stop_ids:
            self._end(i, job, "stop", job.text)
            return
        self.tokens[i].append(token)
        text = self.tokenizer.decode(self.tokens[i], skip_special_tokens=True)
        cut = min((p for p in (text.find(s) for s in job.sampling.stop) if p >= 0), default=-1)
        if cut >= 0:
            self._end(i, job, "stop", text[:cut])
        elif job.cancelled or job.tokens >= job.sampling.max_tokens:
            self._end(i, job, "stop" if job.cancelled else "length", text)
        elif not text.endswith("\ufffd"):  # a character still incomplete waits for its next byte
            hold = max((_overlap(text, s) for s in job.sampling.stop), default=0)
            self._emit(i, job, text[: len(text) - hold])

    def _emit(self, i: int, job: Job, text: str) -> None:
        if len(text) > self.sent[i]:
            piece, self.sent[i] = text[self.sent[i] :], len(text)
            job.text = text
            if job.on_text is not None:
                job.on_text(piece)

    def _end(self, i: int, job: Job, reason: str, text: str) -> None:
        self._emit(i, job, text.removesuffix("\ufffd"))
        job.finish_reason = reason

    def finish(self) -> None:
        """Rows still open when the sampler returned hit the batch's token limit."""
        for i, job in enumerate(self.jobs):
            if job.finish_reason is None:
                self._end(i, job, "length", self.tokenizer.decode(self.tokens[i], skip_special_tokens=True))


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of ``text`` that is a beginning of ``stop`` (text to hold back)."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
