"""The reward model: a backbone with a scalar head, trained on preference pairs (Bradley–Terry).

The model is ``AutoModelForSequenceClassification(num_labels=1)`` over any Hugging Face backbone;
its one logit is the reward. Trained with loss = −log σ(r_chosen − r_rejected) (Ziegler et al. 2019,
eq. 1, with two candidates), so σ(r_a − r_b) is the predicted probability that a is preferred.

How (prompt, completion) becomes the model's input — the ``format`` stored with the model:

- ``"pair"`` (encoders: BERT, MiniLM, RoBERTa, …): the tokenizer's text pair
  ``[CLS] prompt [SEP] completion [SEP]``, segment ids telling the two apart, read by the mean of
  the last hidden states over the real tokens (``pooling="mean"``, the default where the head is a
  plain linear layer: sentence encoders such as all-MiniLM-L6-v2 were trained to mean-pool, and on
  the demo's 1,400 pairs it gives 69–70% held-out accuracy against 65% read at [CLS]) or by the
  model's own head at [CLS] (``pooling="cls"``). Over
  ``max_length`` the prompt is cut first (``truncation="only_first"``): the completion is what is
  judged. A completion too long even alone is cut too (``"longest_first"``), row by row.
- ``"concat"`` (causal LMs: Llama, GPT-2, Qwen2, …): ``prompt + "\\n\\n" + completion`` and the EOS
  token, right-padded, read at the last real token (HF's sequence-classification heads pool there;
  right padding keeps position ids intact, left padding would shift them). Over ``max_length`` the
  text is cut from the left, so the end of the completion — where the reward is read — always stays.

Rewards are normalised on use: ``score`` returns (r − mean) / std, with mean and std measured over
the training completions and stored in ``rlhfkit_reward.json``, so a policy like the one that wrote
them scores mean 0, std 1 ("N implementation details of RLHF with PPO", Huang et al. 2024, reward
normalisation; lm-human-preferences normalises the reward model's output the same way).

A trained model is a folder: ``save_pretrained`` files, the tokenizer, ``rlhfkit_reward.json``
(backbone, format, max_length, mean, std) and ``eval.json``. It is written into a temporary folder
beside the target and renamed into place, so a failed run never leaves a half-written folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.data.records import Pair
from rlhfkit.models.load import quiet_transformers

REWARD_FILE = "rlhfkit_reward.json"
EVAL_FILE = "eval.json"
MIN_PAIRS = 4
"""Fewer pairs than this cannot give both a training and a held-out split worth the name."""
MAX_GRAD_NORM = 1.0
"""Gradient-norm clip, the transformers Trainer's default (TRL's RewardTrainer inherits it)."""
CAUSAL_SEPARATOR = "\n\n"

Row = dict[str, list[int]]  # one encoded input: input_ids and, for encoders, token_type_ids


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def backbone_format(config) -> str:
    """``"pair"`` for a bidirectional encoder (it has a masked-LM form), ``"concat"`` for a causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return "pair" if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "concat"


def encode(tokenizer, fmt: str, prompts: Sequence[str], completions: Sequence[str], max_length: int) -> list[Row]:
    """Token ids of each (prompt, completion), at most ``max_length`` tokens each (no padding)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if not prompts:
        return []
    if fmt == "pair":
        return _encode_pair(tokenizer, list(prompts), list(completions), max_length)
    if fmt == "concat":
        return _encode_concat(tokenizer, list(prompts), list(completions), max_length)
    raise ValueError(f"unknown reward-model input format {fmt!r}")


def _encode_pair(tokenizer, prompts: list[str], completions: list[str], max_length: int) -> list[Row]:
    # "only_first" fails for the whole batch if one completion alone overflows; those rows go the
    # "longest_first" way (both cut), decided from the completion's own length.
    special = tokenizer.num_special_tokens_to_add(pair=True)
    alone = tokenizer(completions, add_special_tokens=False, verbose=False)["input_ids"]
    fits = [len(ids) + special < max_length for ids in alone]
    rows: list[Row | None] = [None] * len(prompts)
    for keep, strategy in ((True, "only_first"), (False, "longest_first")):
        idx = [i for i, f in enumerate(fits) if f == keep]
        if not idx:
            continue
        enc = tokenizer([prompts[i] for i in idx], [completions[i] for i in idx], truncation=strategy,
                        max_length=max_length, return_token_type_ids=True)
        for j, i in enumerate(idx):
            rows[i] = {k: enc[k][j] for k in ("input_ids", "token_type_ids") if k in enc}
    return rows  # type: ignore[return-value]


def _encode_concat(tokenizer, prompts: list[str], completions: list[str], max_length: int) -> list[Row]:
    texts = [c if not p else p + CAUSAL_SEPARATOR + c for p, c in zip(prompts, completions)]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"  # keep the end: the reward is read at the last token
    try:
        ids = tokenizer(texts, truncation=True, max_length=max_length - len(eos))["input_ids"]
    finally:
        tokenizer.truncation_side = side
    return [{"input_ids": row + eos} for row in ids]


def pad_rows(rows: Sequence[Row], pad_id: int) -> dict[str, "torch.Tensor"]:
    """Right-pad rows to the longest: input_ids, attention_mask (and token_type_ids), each (N, T)."""
    import torch

    T = max(len(r["input_ids"]) for r in rows)
    out = {"input_ids": torch.full((len(rows), T), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros((len(rows), T), dtype=torch.long)}
    if "token_type_ids" in rows[0]:
        out["token_type_ids"] = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        out["input_ids"][i, :n] = torch.tensor(r["input_ids"])
        out["attention_mask"][i, :n] = 1
        if "token_type_ids" in out:
            out["token_type_ids"][i, :n] = torch.tensor(r["token_type_ids"])
    return out


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def _encoder_and_head(model):
    """(the encoder, the linear scalar head) of a sequence classifier, through a peft wrapper; None if
    the head is not one nn.Linear over the hidden size (e.g. RoBERTa's two-layer head reads [CLS] itself)."""
    from torch import nn

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(inner, "classifier", None)
    if hasattr(head, "modules_to_save"):  # peft trains a copy of the head
        head = head.modules_to_save["default"]
    encoder = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    if isinstance(head, nn.Linear) and encoder is not None and head.in_features == inner.config.hidden_size:
        return encoder, head
    return None


def _head_name(model) -> str:
    for name in ("score", "classifier"):  # decoders' heads / encoders' heads in transformers
        if hasattr(model, name):
            return name
    raise RlhfkitError(f"{type(model).__name__}: no 'score' or 'classifier' head to train")


class RewardModel:
    """A scalar-head model with its tokenizer, input format and normalisation statistics."""

    def __init__(self, model, tokenizer, *, fmt: str, max_length: int, backbone: str, mean: float = 0.0,
                 std: float = 1.0, dtype: str = "float32", pooling: str = "cls"):
        self.model = model
        self.pooling = pooling  # "mean" (encoders with a linear head) or "cls": the model's own head
        # Weights stay float32; with "bfloat16" the forward runs under autocast (matmuls in bfloat16,
        # reductions and the loss in float32): on a CPU with AVX512-BF16 training is ~1.7× faster.
        self.compute_dtype = dtype
        self.tokenizer = tokenizer
        self.format = fmt
        self.max_length = max_length
        self.backbone = backbone
        self.mean = mean
        self.std = std

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    # -- building and loading

    @classmethod
    def from_backbone(cls, backbone: str, *, max_length: int = 256, lora_r: int = 0, device: str = "cpu",
                      seed: int = 0, dtype: str = "float32", pooling: str = "auto") -> "RewardModel":
        """A fresh scalar head (seeded) on ``backbone``: a folder, a hub id, or 'minilm'.

        ``pooling``: for encoders, "mean" (mean of the last hidden states; needs a linear head),
        "cls" (the model's own head at [CLS]) or "auto" (mean where possible); causal LMs always
        read the last token.

        ``dtype``: compute precision (float32, bfloat16 autocast, or auto: ``resolve_dtype``).

        ``lora_r`` > 0 trains LoRA adapters (rank r, α = 2r) and the head; the backbone stays frozen.
        """
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from rlhfkit.models.load import load_tokenizer, resolve, resolve_dtype

        dtype = resolve_dtype(dtype, device)
        path = resolve(backbone)
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise RlhfkitError(f"{backbone}: cannot load model config ({exc})") from None
        fmt = backbone_format(config)
        try:
            if fmt == "pair":
                tokenizer = AutoTokenizer.from_pretrained(path)
                tokenizer.padding_side = "right"
            else:
                tokenizer = load_tokenizer(path, padding_side="right")
        except OSError as exc:
            raise RlhfkitError(f"{backbone}: cannot load tokenizer ({exc})") from None
        if tokenizer.pad_token_id is None:
            raise RlhfkitError(f"{backbone}: the tokenizer has no padding token")
        max_length = min(max_length, getattr(config, "max_position_embeddings", max_length) or max_length)
        torch.manual_seed(seed)  # the head's initial weights
        try:
            with quiet_transformers():
                model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise RlhfkitError(f"{backbone}: cannot load as a sequence classifier ({exc})") from None
        if fmt == "concat":
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
            # HF's decoder heads read the last token that is not padding: they must know the pad id.
            model.config.pad_token_id = tokenizer.pad_token_id
        if lora_r > 0:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules="all-linear",
                              bias="none", task_type="SEQ_CLS", modules_to_save=[_head_name(model)])
            with quiet_transformers():  # peft calls a transformers method deprecated in 5.x
                model = get_peft_model(model, lora)
        model.to(device)
        model.eval()
        if fmt == "concat" or pooling == "cls":
            pooling = "cls"
        elif _encoder_and_head(model) is not None:
            pooling = "mean"
        elif pooling == "mean":
            raise RlhfkitError(f"{backbone}: mean pooling needs a single linear head over the hidden states (use pooling cls)")
        else:
            pooling = "cls"
        return cls(model, tokenizer, fmt=fmt, max_length=max_length, backbone=backbone, dtype=dtype, pooling=pooling)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto", dtype: str = "float32") -> "RewardModel":
        """A trained reward-model folder (written by :meth:`save`); ``dtype`` as in :meth:`from_backbone`."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from rlhfkit.models.load import pick_device, resolve_dtype

        device = pick_device(device)
        dtype = resolve_dtype(dtype, device)
        folder = Path(path)
        meta_path = folder / REWARD_FILE
        if not meta_path.exists():
            what = "does not exist" if not folder.exists() else f"is not a reward model (no {REWARD_FILE})"
            raise RlhfkitError(f"{folder}: {what}")
        meta = json.loads(meta_path.read_text())
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            with quiet_transformers():
                model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise RlhfkitError(f"{folder}: cannot load reward model ({exc})") from None
        tokenizer.padding_side = "right"
        model.to(device)
        # Fresh (aligned) copies of the weights: tensors read from the file can sit at addresses where the
        # CPU matmul takes another code path and the scores differ in the last bits from the saved model's.
        with torch.no_grad():
            for param in model.parameters():
                param.data = param.data.clone()
        model.eval()
        return cls(model, tokenizer, fmt=meta["format"], max_length=int(meta["max_length"]),
                   backbone=meta["backbone"], mean=float(meta["mean"]), std=float(meta["std"]), dtype=dtype,
                   pooling=meta.get("pooling", "cls"))

    def save(self, path: str | os.PathLike, *, report: dict | None = None) -> Path:
        """Write the model folder atomically (temp folder + rename); ``report`` becomes eval.json.

        LoRA adapters are merged into the weights first, so the folder loads without peft.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if hasattr(self.model, "merge_and_unload"):
            self.model = self.model.merge_and_unload()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            with quiet_transformers():
                self.model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
            meta = {"backbone": self.backbone, "format": self.format, "max_length": self.max_length,
                    "pooling": self.pooling, "mean": self.mean, "std": self.std}
            (tmp / REWARD_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            if report is not None:
                (tmp / EVAL_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            os.chmod(tmp, 0o777 & ~_umask())
            # os.replace cannot replace a non-empty folder: move the old one aside, then drop it.
            old = None
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
                os.replace(target, old / target.name)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    # -- scoring

    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> list[Row]:
        return encode(self.tokenizer, self.format, prompts, completions, self.max_length)

    def forward(self, rows: Sequence[Row]) -> "torch.Tensor":
        """(N,) raw rewards of encoded rows, one forward pass, with gradient if enabled."""
        import torch

        batch = {k: v.to(self.device) for k, v in pad_rows(rows, self.pad_id).items()}  # each (N, T)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.compute_dtype == "bfloat16"):
            if self.pooling == "mean":
                encoder, head = _encoder_and_head(self.model)
                hidden = encoder(**batch).last_hidden_state  # (N, T, H)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
                logits = head((hidden * mask).sum(1) / mask.sum(1))  # mean over real tokens → (N, 1)
            else:
                logits = self.model(**batch).logits  # (N, 1)
        return logits.squeeze(-1).float()  # (N,)

    def raw_scores(self, rows: Sequence[Row], batch_size: int = 64) -> list[float]:
        """Raw rewards in input order; batches of similar length (little padding), no gradient."""
        import torch

        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        out = [0.0] * len(rows)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for lo in range(0, len(order), batch_size):
                idx = order[lo : lo + batch_size]
                for i, r in zip(idx, self.forward([rows[i] for i in idx]).tolist()):
                    out[i] = r
        self.model.train(was_training)
        return out

    def score(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64,
              normalize: bool = True) -> list[float]:
        """Reward of each completion for its prompt; normalised with the stored mean/std unless told not to."""
        raw = self.raw_scores(self.encode(prompts, completions), batch_size)
        if not normalize:
            return raw
        return [(r - self.mean) / self.std for r in raw]

    def fit_normalization(self, prompts: Sequence[str], completions: Sequence[str],
                          batch_size: int = 64) -> tuple[float, float]:
        """Set mean/std so that these completions (e.g. the reference policy's) score mean 0, std 1."""
        self.mean, self.std = reward_stats(self.score(prompts, completions, batch_size, normalize=False))
        return self.mean, self.std


def reward_stats(rewards: Sequence[float]) -> tuple[float, float]:
    """(mean, population std) of raw rewards; the std is floored at 1e-6 so normalising never divides by 0."""
    n = len(rewards)
    if n == 0:
        raise ValueError("reward_stats needs at least one reward")
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)
    return mean, max(std, 1e-6)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------
# Metrics (pure)
# ---------------------------------------------------------------------------------------------


def pairwise_accuracy(r_chosen: Sequence[float], r_rejected: Sequence[float]) -> float:
    """Fraction of pairs ranked right: r_chosen > r_rejected counts 1, a tie ½ (a coin flip)."""
    if len(r_chosen) != len(r_rejected) or not r_chosen:
        raise ValueError("pairwise_accuracy needs two equally long, non-empty reward lists")
    hits = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(r_chosen, r_rejected))
    return hits / len(r_chosen)


def calibration_bins(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> list[dict]:
    """Reliability-diagram bins over [0, 1]: {bin, count, mean_prob, accuracy} for each non-empty bin.

    Bin k holds probabilities in [k/n, (k+1)/n); the last bin also holds 1. ``accuracy`` is the
    bin's observed frequency of label 1.
    """
    if len(probs) != len(labels) or not probs:
        raise ValueError("calibration needs equally long, non-empty probs and labels")
    sums: dict[int, list[float]] = {}
    for p, y in zip(probs, labels):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability {p} is outside [0, 1]")
        acc = sums.setdefault(min(int(p * n_bins), n_bins - 1), [0.0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += p
        acc[2] += y
    return [{"bin": b, "count": int(n), "mean_prob": s_p / n, "accuracy": s_y / n}
            for b, (n, s_p, s_y) in sorted(sums.items())]


def expected_calibration_error(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> float:
    """Σ_b (n_b / N) · |observed frequency of 1 in b − mean probability in b| over :func:`calibration_bins`."""
    # Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 3 (here for a binary outcome).
    bins = calibration_bins(probs, labels, n_bins)
    return sum(b["count"] * abs(b["accuracy"] - b["mean_prob"]) for b in bins) / len(probs)


def pair_probabilities(r_chosen: Sequence[float], r_rejected: Sequence[float]) -> tuple[list[float], list[float]]:
    """(P(a ≻ b) = σ(r_a − r_b), outcome) for every pair read both ways: (p, 1) and (1 − p, 0).

    A pair is unordered to the model: with chosen always first every outcome would be 1 and the
    ECE just 1 − mean p. Reading both ways gives a symmetric reliability diagram.
    """
    probs = [1.0 / (1.0 + math.exp(-_clamp(c - r))) for c, r in zip(r_chosen, r_rejected)]
    return probs + [1.0 - p for p in probs], [1.0] * len(probs) + [0.0] * len(probs)


def pair_calibration_error(r_chosen: Sequence[float], r_rejected: Sequence[float], n_bins: int = 10) -> float:
    """ECE of σ(r_a − r_b) over pairs read both ways (:func:`pair_probabilities`)."""
    return expected_calibration_error(*pair_probabilities(r_chosen, r_rejected), n_bins)


def _clamp(x: float, bound: float = 80.0) -> float:
    return max(-bound, min(bound, x))  # exp(80) is finite in float64


# ---------------------------------------------------------------------------------------------
# Data preparation (pure)
# ---------------------------------------------------------------------------------------------


def check_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    """The pairs that carry weight; RlhfkitError naming the first bad pair (numbered from 1).

    Pairs read from JSONL were checked by ``Pair.from_dict`` already (and located at file:line);
    this catches pairs built in Python.
    """
    for i, p in enumerate(pairs, start=1):
        where = f"pair {i} of {len(pairs)}"
        for name in ("prompt", "chosen", "rejected"):
            if not isinstance(getattr(p, name), str) or not getattr(p, name).strip():
                raise RlhfkitError(f"{where}: field '{name}' is empty")
        if p.chosen == p.rejected:
            raise RlhfkitError(f"{where}: fields 'chosen' and 'rejected' are the same text")
        if not (isinstance(p.weight, (int, float)) and math.isfinite(p.weight) and p.weight >= 0):
            raise RlhfkitError(f"{where}: field 'weight' must be a finite number ≥ 0, got {p.weight!r}")
    # A zero weight adds nothing to the loss, and a batch of only such pairs would divide 0 by 0.
    kept = [p for p in pairs if p.weight > 0]
    if len(kept) < MIN_PAIRS:
        raise RlhfkitError(f"need at least {MIN_PAIRS} pairs with weight > 0 to train a reward model, got {len(kept)}")
    return kept


def split_by_prompt(pairs: Sequence[Pair], eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): a seeded share of the distinct prompts is held out whole.

    No prompt has pairs on both sides, so held-out accuracy measures generalisation to new prompts
    rather than memory of a prompt's other comparisons.
    """
    prompts = sorted({p.prompt for p in pairs})  # sorted: the shuffle below depends on the seed only
    if eval_fraction <= 0:
        return list(range(len(pairs))), []
    if len(prompts) < 2:
        raise RlhfkitError("all pairs share one prompt: cannot hold out prompts (set eval_fraction to 0)")
    random.Random(seed).shuffle(prompts)
    n_eval = min(max(1, round(eval_fraction * len(prompts))), len(prompts) - 1)
    held = set(prompts[:n_eval])
    train = [i for i, p in enumerate(pairs) if p.prompt not in held]
    heldout = [i for i, p in enumerate(pairs) if p.prompt in held]
    return train, heldout


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random,
                           group: int = 50) -> list[list[int]]:
    """Shuffled batches of indices whose lengths are alike, so padding wastes little compute.

    Shuffle, cut into mega-batches of ``group`` batches, sort each by length, cut into batches,
    shuffle the batch order (the transformers Trainer's ``group_by_length`` sampler, mega-batch 50).
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    mega = batch_size * group
    for lo in range(0, len(order), mega):
        chunk = sorted(order[lo : lo + mega], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def linear_schedule(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _fingerprint(pairs: Sequence[Pair], **settings: Any) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for p in pairs:
        h.update(json.dumps([p.prompt, p.chosen, p.rejected, p.weight]).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _disable_dropout(model) -> None:
    # Dropout makes the chosen and rejected rows of one forward pass see different noise and the
    # reward noisy; TRL's RewardConfig(disable_dropout=True) and Huang et al. 2024 turn it off.
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _trainable_state(model) -> dict:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model, state: dict) -> None:
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v.to(params[n].device))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def pair_metrics(r_chosen: Sequence[float], r_rejected: Sequence[float], weights: Sequence[float]) -> dict[str, float]:
    """Weighted BT loss, accuracy (ties ½), mean margin r_c − r_r, ECE and reliability bins (10) of raw rewards."""
    import torch

    from rlhfkit.train.losses import bradley_terry_loss

    loss = bradley_terry_loss(torch.tensor(list(r_chosen), dtype=torch.float64),
                              torch.tensor(list(r_rejected), dtype=torch.float64),
                              weight=torch.tensor(list(weights), dtype=torch.float64))
    n = len(r_chosen)
    probs, outcomes = pair_probabilities(r_chosen, r_rejected)
    return {"loss": float(loss), "accuracy": pairwise_accuracy(r_chosen, r_rejected),
            "margin": sum(c - r for c, r in zip(r_chosen, r_rejected)) / n,
            "ece": expected_calibration_error(probs, outcomes), "pairs": n,
            "calibration": calibration_bins(probs, outcomes)}


def evaluate_pairs(rm: RewardModel, chosen_rows: Sequence[Row], rejected_rows: Sequence[Row],
                   weights: Sequence[float], batch_size: int = 64) -> dict[str, float]:
    """:func:`pair_metrics` of encoded pairs, scored by ``rm`` (raw rewards)."""
    r = rm.raw_scores(list(chosen_rows) + list(rejected_rows), batch_size)
    n = len(chosen_rows)
    return pair_metrics(r[:n], r[n:], weights)


def train_step(rm: RewardModel, chosen_rows: Sequence[Row], rejected_rows: Sequence[Row], weights: Sequence[float],
               optimizer, scheduler, params) -> tuple[float, float]:
    """One optimizer step on B pairs, chosen and rejected in ONE forward pass over 2B rows.

    Returns (loss, pairs ranked right, ties ½). A non-finite loss returns before any update.
    """
    import torch

    from rlhfkit.train.losses import bradley_terry_loss

    B = len(chosen_rows)
    r = rm.forward(list(chosen_rows) + list(rejected_rows))  # (2B,)
    r_c, r_r = r[:B], r[B:]  # (B,) each
    loss = bradley_terry_loss(r_c, r_r, weight=torch.tensor(list(weights), device=r.device))
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        return loss_value, 0.0
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        correct = float(((r_c > r_r).float() + 0.5 * (r_c == r_r).float()).sum())
    return loss_value, correct


def train_reward_model(
    pairs: Sequence[Pair],
    *,
    backbone: str = "minilm",
    out_dir: str | os.PathLike,
    epochs: int = 3,
    batch_size: int = 16,
    lr: float = 5e-5,
    max_length: int = 256,
    eval_fraction: float = 0.2,
    eval_every: int = 0,
    seed: int = 0,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.1,
    patience: int = 2,
    lora_r: int = 0,
    device: str = "auto",
    dtype: str = "float32",
    pooling: str = "auto",
    progress: bool = True,
    run_dir: str | os.PathLike | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    gold_scorer: Callable[[list[str], list[str]], list[float]] | None = None,
) -> dict:
    """Train a reward model on ``pairs``; write it with eval.json to ``out_dir``. Returns the eval report.

    Held-out pairs: ``eval_fraction`` of the prompts, whole (:func:`split_by_prompt`). Each batch of
    B pairs is ONE forward pass over 2B rows (chosen, then rejected), padded to its longest row;
    batches group pairs of similar length. AdamW, linear warm-up and decay, gradient clipping at 1.
    Evaluated every ``eval_every`` steps (0 = at each epoch's end); training stops after ``patience``
    evaluations without a lower held-out loss (0 = never) and keeps the best weights. The
    checkpoint (trainable weights, optimizer, scheduler, RNG, epoch) is written after each epoch;
    ``resume`` continues from it. A non-finite loss stops the run with an error naming epoch and
    batch; nothing is written to ``out_dir`` then. ``gold_scorer(prompts, completions)`` (optional)
    gives the accuracy of a gold scorer on the same held-out pairs, for comparison. With ``run_dir``,
    every evaluation is logged to RUN_DIR/logs/metrics.csv (stage ``train_rm``).
    """
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rlhfkit.models.load import pick_device
    from rlhfkit.train.metrics import MetricsLog

    t_start = time.perf_counter()
    n_given = len(pairs)
    pairs = check_pairs(pairs)
    train_idx, eval_idx = split_by_prompt(pairs, eval_fraction, seed)
    if not train_idx:
        raise RlhfkitError("no pairs left to train on after holding out prompts (lower eval_fraction)")
    device = pick_device(device)
    out_dir = Path(out_dir)
    ckpt = Path(checkpoint_path) if checkpoint_path else out_dir.with_name(out_dir.name + ".ckpt")
    fingerprint = _fingerprint(pairs, backbone=backbone, epochs=epochs, batch_size=batch_size, lr=lr,
                               max_length=max_length, eval_fraction=eval_fraction, eval_every=eval_every,
                               seed=seed, weight_decay=weight_decay, warmup_ratio=warmup_ratio, lora_r=lora_r,
                               dtype=dtype, pooling=pooling)

    rm = RewardModel.from_backbone(backbone, max_length=max_length, lora_r=lora_r, device=device, seed=seed, dtype=dtype,
                                   pooling=pooling)
    _disable_dropout(rm.model)
    # Encode each distinct (prompt, completion) once: a prompt's K completions recur across its pairs.
    texts = sorted({(p.prompt, c) for p in pairs for c in (p.chosen, p.rejected)})
    encoded = dict(zip(texts, rm.encode([t[0] for t in texts], [t[1] for t in texts])))
    chosen = [encoded[(p.prompt, p.chosen)] for p in pairs]
    rejected = [encoded[(p.prompt, p.rejected)] for p in pairs]
    weights = [float(p.weight) for p in pairs]
    pair_len = [max(len(c["input_ids"]), len(r["input_ids"])) for c, r in zip(chosen, rejected)]

    params = [p for p in rm.model.parameters() if p.requires_grad]
    # No weight decay on biases and LayerNorm gains (1-d tensors), as in BERT and the HF Trainer.
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    total_steps = steps_per_epoch * epochs
    warmup = int(warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, warmup, total_steps))

    state = {"epoch": 0, "step": 0, "best_loss": math.inf, "best_step": 0, "best_epoch": 0.0, "best": None,
             "since_best": 0, "stopped_early": False, "history": []}
    if resume:
        if not ckpt.exists():
            raise RlhfkitError(f"{ckpt}: no checkpoint to resume from (run without --resume)")
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved.get("fingerprint") != fingerprint:
            raise RlhfkitError(f"{ckpt}: made with other pairs or settings; use --force to start over")
        _load_trainable(rm.model, saved["trainable"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]

    def run_eval(epoch_float: float, train_sums: list[float]) -> None:
        values = {}
        if train_sums[0] > 0:
            values["reward_model/train_loss"] = train_sums[1] / train_sums[0]
            values["reward_model/train_accuracy"] = train_sums[2] / train_sums[0]
        if eval_idx:
            m = evaluate_pairs(rm, [chosen[i] for i in eval_idx], [rejected[i] for i in eval_idx],
                               [weights[i] for i in eval_idx])
            values.update({"reward_model/loss": m["loss"], "reward_model/accuracy": m["accuracy"],
                           "reward_model/margin": m["margin"], "reward_model/ece": m["ece"]})
            if m["loss"] < state["best_loss"]:
                state.update(best_loss=m["loss"], best_step=state["step"], best_epoch=epoch_float,
                             best=_trainable_state(rm.model), since_best=0)
            else:
                state["since_best"] += 1
        values["reward_model/lr"] = scheduler.get_last_lr()[0]
        state["history"].append({"step": state["step"], "epoch": round(epoch_float, 4), **values})
        if log is not None:
            log.log(state["step"], values)
        train_sums[:] = [0.0, 0.0, 0.0]
        if eval_idx and patience > 0 and state["since_best"] >= patience:
            state["stopped_early"] = True

    columns = [TextColumn("train-rm"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("held-out acc {task.fields[acc]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    log = MetricsLog(run_dir, "train_rm") if run_dir is not None else None
    if log is not None:  # a resumed run re-logs what follows its checkpoint; a fresh one starts over
        log.resume_from(state["step"]) if resume else log.start_fresh()
    t_train = cpu_train = 0.0  # wall and CPU seconds of the training steps (evaluations excluded)
    n_seen = 0
    with contextlib.ExitStack() as stack:
        if log is not None:
            stack.callback(log.close)
        bar = stack.enter_context(Progress(*columns, disable=not progress, transient=False))
        task = bar.add_task("train", total=total_steps, completed=state["step"], loss=float("nan"), acc="-")
        while state["epoch"] < epochs and not state["stopped_early"]:
            epoch = state["epoch"]
            rm.model.train()
            train_sums = [0.0, 0.0, 0.0]  # pairs, loss·pairs, correct
            rng = random.Random(seed * 1_000_003 + epoch)
            batches = length_grouped_batches([pair_len[i] for i in train_idx], batch_size, rng)
            t0, c0 = time.perf_counter(), time.process_time()
            for b, local in enumerate(batches, start=1):
                idx = [train_idx[j] for j in local]
                loss_value, correct = train_step(rm, [chosen[i] for i in idx], [rejected[i] for i in idx],
                                                 [weights[i] for i in idx], optimizer, scheduler, params)
                if not math.isfinite(loss_value):
                    raise RlhfkitError(
                        f"reward-model loss is {loss_value} at epoch {epoch + 1}, batch {b} of {len(batches)}: "
                        f"training stopped, no model written (lower --lr, or check the backbone's weights)"
                    )
                state["step"] += 1
                n_seen += len(idx)
                train_sums[0] += len(idx)
                train_sums[1] += loss_value * len(idx)
                train_sums[2] += correct
                bar.update(task, advance=1, loss=loss_value)
                if eval_every and state["step"] % eval_every == 0 and b < len(batches):
                    t_train, cpu_train = t_train + time.perf_counter() - t0, cpu_train + time.process_time() - c0
                    run_eval(epoch + b / len(batches), train_sums)
                    rm.model.train()
                    bar.update(task, acc=_fmt_acc(state))
                    t0, c0 = time.perf_counter(), time.process_time()
                    if state["stopped_early"]:
                        break
            t_train, cpu_train = t_train + time.perf_counter() - t0, cpu_train + time.process_time() - c0
            if not state["stopped_early"]:
                run_eval(epoch + 1.0, train_sums)
                bar.update(task, acc=_fmt_acc(state))
            state["epoch"] = epoch + 1
            _atomic_torch_save({"fingerprint": fingerprint, "trainable": _trainable_state(rm.model),
                                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                "torch_rng": torch.get_rng_state(), "state": state}, ckpt)

    if state["best"] is not None:
        _load_trainable(rm.model, state["best"])
    rm.model.eval()
    report: dict[str, Any] = {
        "backbone": backbone, "format": rm.format, "max_length": rm.max_length, "lora_r": lora_r,
        "pairs": {"given": n_given, "used": len(pairs), "train": len(train_idx), "heldout": len(eval_idx),
                  "train_prompts": len({pairs[i].prompt for i in train_idx}),
                  "heldout_prompts": len({pairs[i].prompt for i in eval_idx})},
        "epochs_run": state["epoch"], "steps": state["step"], "stopped_early": state["stopped_early"],
        "best_step": state["best_step"] if state["best"] is not None else state["step"],
        "best_epoch": state["best_epoch"] if state["best"] is not None else float(state["epoch"]),
    }
    if eval_idx:
        report["heldout"] = evaluate_pairs(rm, [chosen[i] for i in eval_idx], [rejected[i] for i in eval_idx],
                                           [weights[i] for i in eval_idx])
        if gold_scorer is not None:
            held = [pairs[i] for i in eval_idx]
            g = gold_scorer([p.prompt for p in held] * 2, [p.chosen for p in held] + [p.rejected for p in held])
            report["gold_accuracy"] = pairwise_accuracy(g[: len(held)], g[len(held) :])
    # Normalisation statistics over the distinct training completions ("N implementation details",
    # reward normalisation): PPO then sees rewards of mean 0, std 1 on text like the labelled samples.
    train_texts = sorted({(pairs[i].prompt, c) for i in train_idx for c in (pairs[i].chosen, pairs[i].rejected)})
    raw = dict(zip(train_texts, rm.raw_scores([encoded[t] for t in train_texts])))
    report["train"] = pair_metrics([raw[(pairs[i].prompt, pairs[i].chosen)] for i in train_idx],
                                   [raw[(pairs[i].prompt, pairs[i].rejected)] for i in train_idx],
                                   [weights[i] for i in train_idx])
    rm.mean, rm.std = reward_stats(list(raw.values()))
    report["reward_stats"] = {"mean": rm.mean, "std": rm.std, "texts": len(train_texts)}
    report["train_seconds"] = round(t_train, 3)
    report["train_cpu_seconds"] = round(cpu_train, 3)
    report["pairs_per_s"] = n_seen / t_train if t_train > 0 else None
    report["seconds"] = round(time.perf_counter() - t_start, 3)
    report["history"] = state["history"]
    rm.save(out_dir, report=report)
    with contextlib.suppress(FileNotFoundError):
        ckpt.unlink()  # the run finished: the model folder supersedes the checkpoint
    return report


def _fmt_acc(state: dict) -> str:
    last = state["history"][-1] if state["history"] else {}
    return f"{last['reward_model/accuracy']:.3f}" if "reward_model/accuracy" in last else "-"


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


def run_train_rm(cfg, *, gold_scorer: Callable[[list[str], list[str]], list[float]] | None = None,
                 progress: bool = True) -> dict:
    """The ``train-rm`` stage: RUN_DIR/reward_model/ with eval.json. Returns the eval report (+ paths)."""
    from rlhfkit.config import save_resolved
    from rlhfkit.data.errors import RecordError
    from rlhfkit.data.formats import load_pairs

    run_dir = Path(cfg.run_dir)
    out = run_dir / "reward_model"
    ckpt = run_dir / "reward_model.ckpt"
    if out.exists() and not cfg.force:
        raise RlhfkitError(f"{out} already exists (use --force to overwrite)")
    if ckpt.exists() and not (cfg.resume or cfg.force):
        raise RlhfkitError(f"{ckpt}: an unfinished run's checkpoint (use --resume to continue or --force to start over)")
    spec = cfg.pairs or str(run_dir / "pairs.jsonl")
    skipped: list[RecordError] = []
    # Public HH/TRL files hold a few malformed rows: skip and count them. Our own pairs are read strictly.
    pairs = load_pairs(spec, skipped=skipped)
    report = train_reward_model(
        pairs, backbone=cfg.backbone, out_dir=out, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        max_length=cfg.max_length, eval_fraction=cfg.eval_fraction, eval_every=cfg.eval_every, seed=cfg.seed,
        weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio, patience=cfg.patience, lora_r=cfg.lora_r,
        device=cfg.device, dtype=cfg.dtype, pooling=cfg.pooling, progress=progress, run_dir=run_dir,
        checkpoint_path=ckpt,
        resume=cfg.resume, gold_scorer=gold_scorer,
    )
    save_resolved(run_dir, "train_rm", cfg)
    return {**report, "path": str(out), "pairs_spec": spec, "skipped_rows": len(skipped)}


def read_score_input(lines: Iterator[str], name: str = "<stdin>") -> list[tuple[dict, str, str]]:
    """(record to echo, prompt, completion) per non-blank line.

    A line that is a JSON object needs 'completion' or 'text' (completions.jsonl works as is) and
    may have 'prompt'; any other line is a completion without a prompt (the record {"text": line}).
    """
    from rlhfkit.data.errors import RecordError

    items = []
    for n, line in enumerate(lines, start=1):
        text = line.rstrip("\n").rstrip("\r")
        if not text.strip():
            continue
        obj = None
        if text.lstrip().startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                obj = json.loads(text)
        if isinstance(obj, dict):
            completion = obj.get("completion", obj.get("text"))
            prompt = obj.get("prompt", "")
            if not isinstance(completion, str) or not completion.strip():
                raise RecordError("needs a non-empty string field 'completion' (or 'text')", field="completion",
                                  path=name, line=n)
            if not isinstance(prompt, str):
                raise RecordError("field 'prompt' must be a string", field="prompt", path=name, line=n)
            items.append((obj, prompt, completion))
        else:
            items.append(({"text": text}, "", text))
    return items


def run_score(cfg, *, stdin=None, stdout=None) -> dict:
    """The ``score`` command: one JSON line per input line, the input record plus 'reward'."""
    import sys

    model_dir = Path(cfg.model) if cfg.model else Path(cfg.run_dir) / "reward_model"
    rm = RewardModel.load(model_dir, device=cfg.device, dtype=cfg.dtype)
    if cfg.input == "-":
        items = read_score_input(iter(stdin or sys.stdin))
    else:
        try:
            with open(cfg.input, encoding="utf-8") as f:
                items = read_score_input(iter(f), cfg.input)
        except FileNotFoundError:
            raise RlhfkitError(f"{cfg.input}: file not found") from None
    t0 = time.perf_counter()
    rewards = rm.score([p for _, p, _ in items], [c for _, _, c in items], batch_size=cfg.batch_size,
                       normalize=cfg.normalize) if items else []
    seconds = time.perf_counter() - t0
    lines = "".join(json.dumps({**rec, "reward": r}, ensure_ascii=False) + "\n" for (rec, _, _), r in zip(items, rewards))
    if cfg.output == "-":
        (stdout or sys.stdout).write(lines)
    else:
        from rlhfkit.data.io import atomic_write_text

        atomic_write_text(cfg.output, lines)
    return {"scored": len(items), "seconds": seconds, "texts_per_s": len(items) / seconds if seconds > 0 else None,
            "model": str(model_dir), "output": cfg.output}
