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

``score`` returns (r − mean) / std by default, with mean and std measured over the training
completions and stored in ``rlhfkit_reward.json`` (so scores read on a common scale). PPO reads the
raw logit and normalises it on the reference policy's own rollouts instead (``train.ppo.RewardNorm``):
that is the text it optimises from.

A trained model is a folder: ``save_pretrained`` files, the tokenizer, ``rlhfkit_reward.json``
(backbone, format, max_length, mean, std) and ``eval.json``. It is written through ``data.io.atomic_directory``, so a failed run never leaves a half-written folder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.models.load import quiet_transformers

REWARD_FILE = "rlhfkit_reward.json"
EVAL_FILE = "eval.json"
CAUSAL_SEPARATOR = "\n\n"

Row = dict[str, list[int]]  # one encoded input: input_ids and, for encoders, token_type_ids
Scorer = Callable[[list[str], list[str]], list[float]]  # (prompts, completions) → one score each


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


_READ = {
    "mean": ("    hidden = getattr(model, model.base_model_prefix)(**enc).last_hidden_state  # (1, T, H)\n"
             "    raw = model.classifier(hidden.mean(1)).item()  # the mean of the tokens, NOT model(**enc).logits\n"),
    "cls": "    raw = model(**enc).logits.item()  # the model's own head at [CLS]\n",
}


def loading_card(folder: Path, fmt: str, pooling: str) -> str:
    """README.md of a saved reward model: how to get rlhfkit's rewards with plain transformers.

    ``AutoModelForSequenceClassification(...)(**enc).logits`` alone reads [CLS] through the pooler;
    a mean-pooled model (the default for sentence encoders) gives other numbers that way (issue 19.7).
    """
    if fmt == "pair":
        encode_line = ('    enc = tok(prompt, completion, truncation="only_first", max_length=meta["max_length"], '
                       'return_token_type_ids=True, return_tensors="pt")  # segment ids: prompt 0, completion 1\n')
        read = _READ[pooling]
    else:  # concat: prompt, blank line, completion, EOS; read at the last token (right end, cut from the left)
        encode_line = ("    ids = tok(prompt + '\\n\\n' + completion if prompt else completion)['input_ids']\n"
                       "    ids = (ids + [tok.eos_token_id])[-meta['max_length']:]\n"
                       "    enc = {'input_ids': torch.tensor([ids])}\n")
        read = _READ["cls"].replace("at [CLS]", "at the last token")
    return (
        "# rlhfkit reward model\n\n"
        f"Input format `{fmt}`, pooling `{pooling}` (see `rlhfkit_reward.json`). `rlhfkit score` gives the same "
        "numbers as this (`--no-normalize`: `raw`):\n\n"
        "```python\n"
        "import json\n\nimport torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
        f"folder = {str(folder)!r}\n"
        "tok = AutoTokenizer.from_pretrained(folder)\n"
        "model = AutoModelForSequenceClassification.from_pretrained(folder).eval()\n"
        "meta = json.load(open(f'{folder}/rlhfkit_reward.json'))\n\n\n"
        "@torch.no_grad()\n"
        "def reward(prompt: str, completion: str) -> float:\n"
        f"{encode_line}{read}"
        "    return (raw - meta['mean']) / meta['std']  # normalised as `rlhfkit score` does\n"
        "```\n"
    )


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
        self._net = None

    @property
    def net(self):
        """The forward as one module (models/reward_net.py) over the current ``model``: what DDP / FSDP wrap."""
        if self._net is None or self._net.model is not self.model:
            from rlhfkit.models.reward_net import RewardNet

            self._net = RewardNet(self.model, self.pooling)
        return self._net

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

        from rlhfkit.models.load import fuse_activations, load_tokenizer, resolve, resolve_dtype

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
        fuse_activations(model)
        if fmt == "concat":
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
            # HF's decoder heads read the last token that is not padding: they must know the pad id.
            model.config.pad_token_id = tokenizer.pad_token_id
        if lora_r > 0:
            from peft import LoraConfig

            from rlhfkit.models.lora import with_lora

            lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules="all-linear",
                              bias="none", task_type="SEQ_CLS", modules_to_save=[_head_name(model)])
            model = with_lora(model, lora)
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

        from rlhfkit.models.load import fuse_activations, pick_device, resolve_dtype

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
        fuse_activations(model)
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
        from rlhfkit.data.io import atomic_directory

        if hasattr(self.model, "merge_and_unload"):
            self.model = self.model.merge_and_unload()
        with atomic_directory(path) as tmp:
            with quiet_transformers():
                self.model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
            meta = {"backbone": self.backbone, "format": self.format, "max_length": self.max_length,
                    "pooling": self.pooling, "mean": self.mean, "std": self.std}
            (tmp / REWARD_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            (tmp / "README.md").write_text(loading_card(Path(path), self.format, self.pooling))
            if report is not None:
                (tmp / EVAL_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        return Path(path)

    # -- scoring

    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> list[Row]:
        return encode(self.tokenizer, self.format, prompts, completions, self.max_length)

    def forward(self, rows: Sequence[Row], runner=None) -> "torch.Tensor":
        """(N,) raw rewards of encoded rows, one forward pass, with gradient if enabled.

        ``runner``: the DDP / FSDP wrapper of ``net`` to run through (training under torchrun); None: ``net``.
        """
        import torch

        batch = {k: v.to(self.device) for k, v in pad_rows(rows, self.pad_id).items()}  # each (N, T)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.compute_dtype == "bfloat16"):
            return (runner if runner is not None else self.net)(**batch)  # (N,)

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


def reward_stats(rewards: Sequence[float]) -> tuple[float, float]:
    """(mean, population std) of raw rewards; the std is floored at 1e-6 so normalising never divides by 0."""
    n = len(rewards)
    if n == 0:
        raise ValueError("reward_stats needs at least one reward")
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)
    return mean, max(std, 1e-6)


@dataclass
class RewardNorm:
    """The reward as PPO sees it: (raw − mean) / std, fitted once on the reference policy's rollouts.

    Fitted on iteration 0's rollouts — the policy is still the reference then, sampled under PPO's own
    settings — and kept for the whole run (and its resumes), so objective/score starts near 0 and a
    rise means the policy beats the reference ([lmhp] OpenAI lm-human-preferences normalises the
    reward model's output on the initial policy's samples; [N-det] Huang et al. 2024, detail on reward
    normalisation). Statistics of the reward model's own training texts would describe other text:
    other lengths, other sampling.
    """

    mean: float
    std: float
    n: int

    FILE = "reward_norm.json"

    @classmethod
    def fit(cls, raw: "torch.Tensor") -> "RewardNorm":
        mean, std = reward_stats(raw.tolist())
        return cls(mean, std, raw.numel())

    def __call__(self, raw):
        return (raw - self.mean) / self.std

    def save(self, folder: str | os.PathLike) -> None:
        """Into a policy folder, beside the weights it was optimised under (written inside its atomic folder)."""
        (Path(folder) / self.FILE).write_text(json.dumps({"mean": self.mean, "std": self.std, "n": self.n}) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "RewardNorm":
        path = Path(folder) / cls.FILE
        if not path.exists():
            raise RlhfkitError(f"{folder}: no {cls.FILE} (a policy written by an older rlhfkit: re-run ppo --force)")
        data = json.loads(path.read_text())
        return cls(float(data["mean"]), float(data["std"]), int(data["n"]))
