"""``rlhfkit doctor``: memory per rank of a training run, estimated from config.json alone (nothing loads).

Pure arithmetic on the model's shape (hidden size H, layers L, vocabulary V, heads a, key/value heads,
intermediate size I), the run's batch and sequence length, and the strategy. Sources of the formulas:

- parameters: counted from the shapes (Llama-style gated MLP 3·H·I, else 2·H·I; attention H·(2·H_q + 2·kv));
  SmolLM2-135M gives 134.5 M and all-MiniLM-L6-v2 22.7 M, their true counts.
- gradients and Adam: 4 bytes per trained parameter for the float32 gradient, 8 for Adam's two moments
  (Rajbhandari et al. 2020, ZeRO §3: K = 12 bytes of optimizer state per parameter with an fp32 master copy;
  here the trained weights are fp32 already). FSDP2 shards weights, gradients and optimizer state: ÷ N.
- activations kept for the backward pass: s·b·H·(34 + 5·a·s/H) bytes per layer for 16-bit activations
  (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. 1; a gated
  MLP with I ≈ 8H/3 stores as much as the 4H MLP counted there); ×2 in float32. LoRA on the top k blocks keeps
  activations of those k only (the frozen blocks below run without a graph).
- logits: b·t·V float32, three copies in training (logits, log-softmax, its gradient): the largest single
  tensor for small models with big vocabularies.
- KV cache while sampling: 2·L·b·s·kv_heads·head_dim elements in the weights' dtype.
A fixed 0.5 GiB stands for the framework itself (PyTorch, transformers, allocator slack). Estimates, not
bounds: compare them with a measured peak (bench/memory.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data.errors import RlhfkitError

GIB = 1024**3
FRAMEWORK_BYTES = 0.5 * GIB
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GATED = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "olmo", "olmo2", "granite")


@dataclass(frozen=True)
class Shape:
    """What config.json says about a transformer's size."""

    hidden: int
    layers: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    gated: bool
    tied: bool
    encoder: bool  # BERT-like: position and type embeddings, biases, no LM head
    attn_bias: bool = False  # biases on q, k, v (Qwen2)

    @property
    def params(self) -> int:
        H, I, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = H * (2 * q + 2 * kv)  # W_q, W_o (H·H_q each) and W_k, W_v (H·kv each)
        mlp = (3 if self.gated else 2) * H * I
        block = attn + mlp + 2 * H + (q + 2 * kv if self.attn_bias else 0)
        embed = self.vocab * H
        if self.encoder:  # biases, position (512) and type embeddings, the pooler
            block += 2 * q + 2 * kv + I + H + 2 * H
            return embed + 514 * H + 2 * H + self.layers * block + H * H + H
        return embed + (0 if self.tied else self.vocab * H) + self.layers * block + H

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of each linear layer of one block: what LoRA's 'all-linear' adapts."""
        H, I, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        mlp = [(H, I), (H, I), (I, H)] if self.gated else [(H, I), (I, H)]
        return [(H, q), (H, kv), (H, kv), (q, H), *mlp]

    def lora_params(self, r: int, layers: int) -> int:
        """Adapters of rank r on every linear of the top ``layers`` blocks (0 = all): r·(in + out) each."""
        n = layers or self.layers
        return n * sum(r * (i + o) for i, o in self.linears())


def read_shape(folder: str | Path) -> Shape:
    """The Shape of a model folder's config.json (Llama / Qwen2 / GPT-2 / BERT names)."""
    path = Path(folder) / "config.json"
    try:
        c = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RlhfkitError(f"{path}: cannot read the model's config ({exc})") from None

    def get(*names, default=None):
        for n in names:
            if c.get(n) is not None:
                return c[n]
        if default is None:
            raise RlhfkitError(f"{path}: no field {names[0]} (the doctor needs the model's shape)")
        return default

    H, heads = int(get("hidden_size", "n_embd", "d_model")), int(get("num_attention_heads", "n_head"))
    kind = c.get("model_type", "")
    return Shape(hidden=H, layers=int(get("num_hidden_layers", "n_layer")), vocab=int(get("vocab_size")), heads=heads,
                 kv_heads=int(get("num_key_value_heads", default=heads)), head_dim=int(get("head_dim", default=H // heads)),
                 intermediate=int(get("intermediate_size", "n_inner", default=4 * H)), gated=kind in GATED,
                 tied=bool(c.get("tie_word_embeddings", True)), encoder=kind in ("bert", "roberta", "distilbert", "electra"),
                 attn_bias=bool(c.get("attention_bias", kind == "qwen2")))


@dataclass(frozen=True)
class Plan:
    """The run to estimate (the doctor's options, resolved)."""

    stage: str  # ppo, dpo, sft, train-rm
    lora_r: int
    lora_layers: int
    dtype: str  # the frozen weights' dtype (full fine-tuning trains float32)
    batch_size: int  # global
    minibatch_size: int  # global, ppo only
    prompt_tokens: int
    new_tokens: int
    strategy: str
    world_size: int


def activations(shape: Shape, b: float, s: int, layers: int, dtype: str) -> float:
    """Korthikanti et al. 2022 eq. 1, s·b·H·(34 + 5·a·s/H) bytes per layer at 16 bits; scaled to ``dtype``."""
    per_layer = s * b * shape.hidden * (34 + 5 * shape.heads * s / shape.hidden)
    return layers * per_layer * BYTES[dtype] / 2


def estimate(shape: Shape, plan: Plan, reward: Shape | None = None) -> dict[str, float]:
    """Bytes per rank of each part of ``plan`` (the peak phase for ppo: sampling or training, whichever is larger)."""
    N, fsdp = plan.world_size, plan.strategy == "fsdp" and plan.world_size > 1
    full_ft = plan.lora_r == 0
    dtype = "float32" if full_ft else plan.dtype
    P = shape.params
    trained = P if full_ft else shape.lora_params(plan.lora_r, plan.lora_layers)
    shard = N if fsdp else 1
    s = plan.prompt_tokens + plan.new_tokens
    layers = shape.layers if full_ft or not plan.lora_layers else min(plan.lora_layers, shape.layers)
    out = {"weights": P * BYTES[dtype] / shard + (0 if full_ft else trained * 4 / shard),
           "gradients": trained * 4 / shard, "adam": trained * 8 / shard}
    if plan.stage == "ppo":
        if full_ft:  # the reference is a second, frozen copy (LoRA: the same weights with the adapters off)
            out["reference"] = P * 4
        b_train, b_roll = plan.minibatch_size / N, plan.batch_size / N
        train = activations(shape, b_train, s, layers, dtype) + 3 * b_train * plan.new_tokens * shape.vocab * 4
        # sampling: the KV cache of the rank's prompts; FSDP gathers the whole model around generate
        kv = 2 * shape.layers * b_roll * s * shape.kv_heads * shape.head_dim * BYTES[dtype]
        sample = kv + (P * BYTES[dtype] * (1 - 1 / N) if fsdp else 0) + 2 * b_roll * plan.new_tokens * shape.vocab * 4
        out["activations (training)" if train >= sample else "KV cache + scoring (sampling)"] = max(train, sample)
        if reward is not None:
            out["reward model"] = reward.params * 4 + activations(reward, b_roll, s, 1, "float32")
    elif plan.stage in ("dpo", "sft"):
        b = plan.batch_size / N * (2 if plan.stage == "dpo" else 1)  # dpo: chosen and rejected in one forward
        t = plan.new_tokens if plan.stage == "dpo" else s  # dpo reads log-probs of the reply only
        out["activations"] = activations(shape, b, s, layers, dtype) + 3 * b * t * shape.vocab * 4
    elif plan.stage == "train-rm":
        out["activations"] = activations(shape, 2 * plan.batch_size / N, s, layers, dtype)
    else:
        raise RlhfkitError(f"stage: must be ppo, dpo, sft or train-rm, got {plan.stage!r}")
    out["framework"] = FRAMEWORK_BYTES
    return out


def remedies(shape: Shape, plan: Plan, reward: Shape | None, budget: float) -> list[tuple[str, float]]:
    """(what to change, the estimate after it) for changes that lower the estimate, smallest estimate first."""
    R = dataclasses.replace
    tries = []
    if plan.lora_r == 0:
        tries.append(("--lora-r 16 (LoRA: the base frozen, no gradients or Adam state for it)", R(plan, lora_r=16)))
    elif plan.dtype == "float32":
        tries.append(("--dtype bfloat16 (frozen base weights in 16 bits)", R(plan, dtype="bfloat16")))
    if plan.lora_r and plan.lora_layers == 0:
        tries.append(("--lora-layers 8 (adapt the top 8 blocks: activations of 8 only)", R(plan, lora_layers=8)))
    if plan.strategy == "ddp" and plan.world_size > 1:
        tries.append(("--strategy fsdp (weights, gradients and Adam state ÷ N)", R(plan, strategy="fsdp")))
    if plan.stage == "ppo" and plan.minibatch_size > plan.world_size:
        tries.append(("--minibatch-size halved (training activations)", R(plan, minibatch_size=plan.minibatch_size // 2)))
    if plan.batch_size > plan.world_size and plan.batch_size // 2 % plan.world_size == 0:
        tries.append(("--batch-size halved", R(plan, batch_size=plan.batch_size // 2,
                                               minibatch_size=min(plan.minibatch_size, plan.batch_size // 2))))
    if plan.new_tokens > 16:
        tries.append(("--max-new-tokens halved (shorter sequences)", R(plan, new_tokens=plan.new_tokens // 2)))
    base = sum(estimate(shape, plan, reward).values())
    found = [(what, sum(estimate(shape, p, reward).values())) for what, p in tries]
    return sorted([f for f in found if f[1] < base], key=lambda f: f[1])


def device_memory() -> tuple[float, str]:
    """(bytes, what): the GPU's memory when CUDA is there, else this machine's RAM (/proc/meminfo)."""
    try:
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.get_device_properties(0).total_memory), torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        return kib * 1024.0, "this machine's RAM"
    except (OSError, StopIteration):
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "this machine's RAM"


def run_doctor(cfg) -> dict:
    """The ``doctor`` command: the estimate per rank, whether it fits ``cfg.device_memory_gib`` (or this machine's),
    and what to change when it does not. Reads config.json files only."""
    from rlhfkit.models.load import resolve

    shape = read_shape(resolve(cfg.model))
    reward = None
    if cfg.stage in ("ppo", "rloo", "grpo") and cfg.reward_model not in ("", "gold"):
        folder = Path(cfg.reward_model).expanduser()
        reward = read_shape(folder if (folder / "config.json").exists() else resolve(cfg.reward_model))
    plan = Plan(stage="ppo" if cfg.stage in ("rloo", "grpo") else cfg.stage, lora_r=cfg.lora_r,
                lora_layers=cfg.lora_layers, dtype=cfg.dtype, batch_size=cfg.batch_size,
                minibatch_size=cfg.minibatch_size, prompt_tokens=cfg.prompt_tokens, new_tokens=cfg.max_new_tokens,
                strategy=cfg.strategy, world_size=cfg.world_size)
    parts = estimate(shape, plan, reward)
    total = sum(parts.values())
    budget, where = ((cfg.device_memory_gib * GIB, f"{cfg.device_memory_gib:g} GiB given") if cfg.device_memory_gib
                     else device_memory())
    fixes = remedies(shape, plan, reward, budget) if total > budget else []
    return {"model": cfg.model, "params": shape.params,
            "trained_params": shape.params if cfg.lora_r == 0 else shape.lora_params(cfg.lora_r, cfg.lora_layers),
            "parts_gib": {k: v / GIB for k, v in parts.items()}, "total_gib": total / GIB, "device_gib": budget / GIB,
            "device": where, "fits": total <= budget, "plan": dataclasses.asdict(plan),
            "remedies": [{"change": what, "total_gib": t / GIB, "fits": t <= budget} for what, t in fixes]}
