"""The policy of the RL stage: a causal LM (LoRA-wrapped or plain), its frozen reference, and a value head.

With LoRA the reference is the same base with the adapters switched off and the critic is a scalar
head on the policy's backbone, so ONE copy of the weights serves policy, reference and critic — the
answer to the memory problem users of four-model PPO hit most. Full fine-tuning (``lora_r`` 0)
keeps a separate frozen copy as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.models.prefix import FrozenPrefix, head_input, shared_prefix_length
from rlhfkit.models.unwrap import as_reference, fsdp_parts, inner

TRAINABLE_FILE = "trainable.safetensors"


def position_ids(attention_mask: Tensor) -> Tensor:
    """(B, T) positions counted over real tokens only: left padding must not shift them.

    Generation computes positions this way; recomputing log-probs without it gives ρ ≠ 1 at step 0.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def drop_prefix(t: Tensor, attention_mask: Tensor, n: int) -> Tensor:
    """``t`` (B, T, …) without each row's first ``n`` real tokens, still left-padded: (B, T − n, …).

    Rows are left-padded (``attention_mask`` (B, T) is 0 before each row's first real token): row i keeps its
    padding, then everything after its first n real tokens, so the last columns (the response) stay in place.
    """
    B, T = attention_mask.shape
    start = (attention_mask.long().cumsum(1) == 0).sum(1, keepdim=True)  # (B, 1): each row's first real column
    cols = torch.arange(T - n, device=t.device)[None]  # (1, T − n)
    idx = cols + n * (cols >= start)  # (B, T − n): padding as is, then the columns after the prefix
    idx = idx.view(B, T - n, *[1] * (t.dim() - 2)).expand(B, T - n, *t.shape[2:])
    return t.gather(1, idx)


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean "query may attend to key" tensor as the additive mask transformers takes as is (4-D):
    0 where allowed, the dtype's minimum where not."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """logits / temperature in float32; no division (a pass over the logits, and one more in the backward) at 1."""
    return logits.float() if temperature == 1 else logits.float() / temperature


def _sees(cached: Tensor, own: Tensor, dtype: torch.dtype) -> Tensor:
    """The additive 4-D mask of a pass over tokens ``own`` (n, Tq) (1: real, 0: padding) after cached columns
    ``cached`` (n, C) (1: visible): token q sees the visible cached columns and its own real tokens up to q.
    (n, 1, Tq, C + Tq). A padding token may see nothing: the additive mask is finite (``additive_mask``), so its
    softmax is uniform, not NaN, and no real token reads its output."""
    Tq = own.shape[1]
    causal = torch.ones(Tq, Tq, dtype=torch.bool, device=own.device).tril()  # (Tq, Tq)
    sees = torch.cat([cached.bool()[:, None, :].expand(-1, Tq, -1), causal[None] & own.bool()[:, None, :]], dim=2)
    return additive_mask(sees[:, None], dtype)  # (n, 1, Tq, C + Tq)


@dataclass(frozen=True)
class Packed:
    """A custom token layout for ``forward`` / ``reference_logits``: several continuations of one prompt in one row
    (DPO's prompt + chosen + rejected, ``train/dpo.py``), each continuation seeing the prompt and itself only.

    mask: (B, 1, T, T) additive attention mask in the model's dtype (0: attend, dtype min: not), passed to the
    model as is (transformers uses a 4-D mask unchanged); positions: (B, T) position ids; keep: (K,) positions
    whose logits (and values) are returned, in this order.
    """

    mask: Tensor
    positions: Tensor
    keep: Tensor


@dataclass(frozen=True)
class Sharing:
    """Prompt tokens that several rows have in common, for ``forward`` to run once (``PolicyWithValue.sharing``).

    common: real tokens every row starts with (the chat template and system turn), run once at batch 1.
    group: K > 1 when rows g·K … g·K + K − 1 have the same prompt (RLOO's and GRPO's K samples of a prompt):
    the rest of each group's prompt, but its last token, then runs once per group, at batch B / K.
    Each row runs only what is its own: the last prompt token (it predicts the first response token) and the
    response. ``Sharing()`` shares nothing.
    """

    common: int = 0
    group: int = 1

    def __bool__(self) -> bool:
        return self.common > 0 or self.group > 1


NO_SHARING = Sharing()


class PolicyWithValue(nn.Module):
    """A causal LM and a scalar value head reading its last hidden states.

    The value head shares the policy's backbone, so value gradients also move the shared adapters;
    vf_coef keeps that small ([lmhp] OpenAI lm-human-preferences used a separate critic; TRL's
    ValueHead shares).
    """

    def __init__(self, lm: nn.Module, reference: nn.Module | None = None):
        super().__init__()
        self.lm = lm
        self.reference = reference  # None: LoRA, the reference is lm with adapters disabled
        hidden = lm.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        # Zero init: V starts at 0, the mean of the normalised reward ([N-det] Huang et al. 2024 normalise
        # scores to mean 0 over the reference's rollouts).
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        # With a separate reference copy its blocks are not the policy's: nothing is shared to cache.
        self.prefix = FrozenPrefix(lm, enabled=reference is None)

    @property
    def n_frozen(self) -> int:
        """How many of the lowest blocks are frozen and cached per rollout (0: none)."""
        return self.prefix.n_frozen

    def _inputs(self, input_ids: Tensor, attention_mask: Tensor | None, n_response: int, packed: Packed | None) -> dict:
        if packed is not None:
            return dict(input_ids=input_ids, attention_mask=packed.mask, position_ids=packed.positions,
                        logits_to_keep=packed.keep, use_cache=False)
        return dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                    logits_to_keep=n_response + 1, use_cache=False)

    @staticmethod
    def _predicting(t: Tensor, packed: Packed | None) -> Tensor:
        """The kept positions that predict response tokens: all of them for a packed layout (``keep`` names
        them); else logits[:, t] predicts token t+1, the A+1 kept positions are T−A−1 … T−1: drop the last."""
        return t if packed is not None else t[:, :-1]

    def sharing(self, input_ids: Tensor, attention_mask: Tensor, n_response: int) -> Sharing:
        """What of these rows' prompts ``forward`` can run once (``Sharing``): the tokens every prompt starts with
        (the chat template and system turn: ~25 of SmolLM2's ~40 prompt tokens in the demo) and, where runs of K
        consecutive rows have the same prompt, each such group's. Nothing where sharing does not apply: a separate
        reference copy, sliding-window layers (padding between the shared tokens and a row's own would narrow the
        window), FSDP shards (one forward per step), a single row."""
        from transformers import DynamicCache

        B = input_ids.shape[0]
        if (self.reference is not None or B < 2 or fsdp_parts(self)
                or any(DynamicCache(config=self.lm.config).is_sliding)):
            return NO_SHARING
        P = input_ids.shape[1] - n_response
        prompts = [tuple(ids[m.bool()].tolist()) for ids, m in zip(input_ids[:, :P], attention_mask[:, :P])]
        common = shared_prefix_length([list(p) for p in prompts])
        K = next((k for k in range(1, B) if prompts[k] != prompts[0]), B)  # the first run of equal prompts
        grouped = (1 < K < B and B % K == 0 and all(prompts[i] == prompts[i - i % K] for i in range(B))
                   and any(len(prompts[i]) - 1 > common for i in range(0, B, K)))  # something left to share
        return Sharing(common, K if grouped else 1)

    def _run(self, input_ids: Tensor, attention_mask: Tensor | None, n_response: int, prefix: Tensor | None,
             packed: Packed | None, sharing: Sharing):
        """``self.lm``'s output on these rows (adapters as the caller set them). With ``sharing`` the tokens rows
        have in common run once — the common ones at batch 1, then each group's own prompt at batch B / K — into a
        KV cache each row's own tokens then attend to: the same result (to float rounding), gradients included
        (the copies of the shared keys and values pass theirs back to them)."""
        if not sharing:
            with self.prefix.reuse(prefix):
                return self.lm(**self._inputs(input_ids, attention_mask, n_response, packed))
        from transformers import DynamicCache

        B, T = input_ids.shape
        L, K = sharing.common, sharing.group
        decoder = inner(self.lm).get_decoder()  # the shared tokens need no logits (adapters and stub act in place)
        dtype = next(self.lm.parameters()).dtype
        cache = DynamicCache(config=self.lm.config)
        if L:
            first = int((attention_mask[0].long().cumsum(0) == 0).sum())  # row 0's first real column
            with self.prefix.reuse(None if prefix is None else prefix[:1, first : first + L]):
                decoder(input_ids=input_ids[:1, first : first + L], past_key_values=cache, use_cache=True,
                        position_ids=torch.arange(L, device=input_ids.device)[None])
        # the rest of the tokens, in (at most) two passes: each group's prompt but its last token, then each row's own
        # (a 4-D mask, used as is: frozen blocks skipped by the stub fill no cache, so transformers would size its own
        # mask from their empty layers)
        seen = attention_mask.new_ones(1, L)  # (n, C): which cached columns a query may see, per row of the pass
        if K > 1:
            cut = T - n_response - 1  # the columns before each row's own tokens: its last prompt token and response
            lead_mask = attention_mask[::K, :cut]  # (G, cut): each group's prompt but its last token
            own = drop_prefix(lead_mask, lead_mask, L)  # (G, S)
            cache.batch_repeat_interleave(own.shape[0])
            seen = seen.expand(own.shape[0], L)
            with self.prefix.reuse(None if prefix is None else drop_prefix(prefix[::K, :cut], lead_mask, L)):
                decoder(input_ids=drop_prefix(input_ids[::K, :cut], lead_mask, L), past_key_values=cache, use_cache=True,
                        attention_mask=_sees(seen, own, dtype), position_ids=L + position_ids(own))
            cache.batch_repeat_interleave(K)
            seen = torch.cat([seen, own], dim=1).repeat_interleave(K, dim=0)  # (B, L + S)
            own_mask, ids, rest = attention_mask[:, cut:], input_ids[:, cut:], None if prefix is None else prefix[:, cut:]
            positions = position_ids(attention_mask)[:, cut:]
        else:
            cache.batch_repeat_interleave(B)
            seen = seen.expand(B, L)
            own_mask = drop_prefix(attention_mask, attention_mask, L)  # (B, T' = T − L)
            ids, rest = drop_prefix(input_ids, attention_mask, L), None if prefix is None else drop_prefix(prefix, attention_mask, L)
            positions = L + position_ids(own_mask)
        with self.prefix.reuse(rest):
            return self.lm(input_ids=ids, past_key_values=cache, attention_mask=_sees(seen, own_mask, dtype),
                           use_cache=True, position_ids=positions, logits_to_keep=n_response + 1)

    def _head_rows(self, select: Tensor | None, packed: Packed | None) -> Tensor | None:
        """``select`` (B, A) as a mask over the positions the LM head is given (the A + 1 kept ones)."""
        if select is None:
            return None
        if packed is not None:
            raise ValueError("select is not supported with a packed layout")
        return torch.cat([select.bool(), select.new_zeros(select.shape[0], 1, dtype=torch.bool)], dim=1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, n_response: int, temperature: float,
                prefix: Tensor | None = None, packed: Packed | None = None, sharing: Sharing = NO_SHARING,
                select: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits predicting each response token and the value of the state before it.

        input_ids, attention_mask: (B, T) = prompt (left-padded) + response (right-padded), T = P + A.
        prefix: (B, T, H) output of the frozen lower blocks for these rows (``frozen_prefix``), or None.
        packed: another layout (``Packed``; attention_mask and n_response unused): A = len(packed.keep).
        sharing: the prompt tokens rows have in common, run once (``Sharing``, ``sharing``).
        select: (B, A) bool, the response tokens whose logits are wanted (the real ones, not the padding
        after EOS): the LM head — a 49k-word matmul on SmolLM2, forward and backward — runs on those only.
        Returns logits (B, A, V) — or (N, V) at the N selected positions, row by row — scaled by 1/temperature,
        and values (B, A).
        """
        rows = self._head_rows(select, packed)
        with head_input(self.lm, rows) as box:
            out = self._run(input_ids, attention_mask, n_response, prefix, packed, sharing)
        logits = _scaled(out.logits if rows is not None else self._predicting(out.logits, packed), temperature)
        hidden = self._predicting(box[-1], packed)  # (B, A, H): the state before each response token
        values = self.value_head(hidden.float()).squeeze(-1)  # (B, A)
        return logits, values

    @torch.no_grad()
    def reference_logits(self, input_ids: Tensor, attention_mask: Tensor | None, n_response: int, temperature: float,
                         prefix: Tensor | None = None, packed: Packed | None = None, sharing: Sharing = NO_SHARING,
                         select: Tensor | None = None) -> Tensor:
        """(B, A, V) logits of the frozen reference: the base with adapters off, or the separate copy.

        prefix, packed, sharing, select: as in ``forward`` (the frozen lower blocks are the same for policy and
        reference); with ``select``: (N, V).
        """
        rows = self._head_rows(select, packed)
        if self.reference is not None:
            with head_input(self.reference, rows):
                out = self.reference(**self._inputs(input_ids, attention_mask, n_response, packed))
        else:
            with as_reference(self.lm), head_input(self.lm, rows):
                out = self._run(input_ids, attention_mask, n_response, prefix, packed, sharing)
        return _scaled(out.logits if rows is not None else self._predicting(out.logits, packed), temperature)

    @torch.no_grad()
    def frozen_prefix(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor | None:
        """(B, T, H) output of the blocks below the lowest adapted one, or None when every block adapts."""
        return self.prefix.compute(self.lm, input_ids=input_ids, attention_mask=attention_mask,
                                   position_ids=position_ids(attention_mask))

    def trainable_state(self) -> dict[str, Tensor]:
        """What training changes: the adapters (or all LM weights in full fine-tuning) and the value head."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {n: t.detach().cpu().clone() for n, t in self.state_dict().items() if n in names}

    def load_trained(self, folder: Path) -> None:
        """Put the trained weights (adapters or full LM, and the value head) saved in ``folder`` into the model."""
        from safetensors.torch import load_file

        path = Path(folder) / TRAINABLE_FILE
        if not path.exists():
            raise RlhfkitError(f"{folder}: no trained policy ({TRAINABLE_FILE} is missing)")
        try:
            result = self.load_state_dict(load_file(str(path)), strict=False)
        except RuntimeError as exc:  # shapes differ: another LoRA rank or another base
            raise RlhfkitError(f"{folder}: checkpoint does not match the model ({str(exc).splitlines()[1].strip()} …)") from None
        if result.unexpected_keys:
            raise RlhfkitError(f"{folder}: checkpoint does not match the model ({result.unexpected_keys[:3]} …)")


def sampler_is_policy(model: PolicyWithValue) -> bool:
    """Whether what the sampler reports can stand for the policy's forward pass (its log-probs, LM-head input and
    frozen blocks' output): float32 weights, where they differ from a recomputation by rounding only (≤ ~1e-5;
    bfloat16 differs by ~1e-2 between the cached and the full pass), not FSDP-sharded (the value head cannot run
    outside the wrapped forward, and the sampler's weights are gathered)."""
    return all(p.dtype == torch.float32 for p in model.parameters()) and not fsdp_parts(model)


def save_adapter(lm, folder: Path, base: str, state_dict: dict | None = None) -> None:
    """The peft adapter in ``folder`` itself, so ``PeftModel.from_pretrained(base_model, folder)`` loads it,
    naming its real base (``load.base_model_id``) rather than a folder in this machine's cache.

    ``state_dict``: the adapter weights as full tensors, keyed as in ``lm.state_dict()`` — needed when ``lm``'s
    own weights are FSDP shards; None reads them from ``lm``."""
    import json

    from rlhfkit.models.load import base_model_id

    lm.save_pretrained(folder, state_dict=state_dict)
    path = Path(folder) / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_model_id(base)
    path.write_text(json.dumps(config, indent=2) + "\n")


def build_policy(model_name: str, *, lora_r: int, lora_alpha: int, device: str, lora_layers: int = 0,
                 dtype: str = "float32") -> tuple[PolicyWithValue, object]:
    """(PolicyWithValue, tokenizer): LoRA over the base (reference = adapters off), or full FT + frozen copy.

    ``dtype`` is the base weights' precision (LoRA only; full fine-tuning is float32). peft keeps the
    adapters in float32 over a bfloat16 base; the value head and all losses are float32.
    """
    from rlhfkit.models.load import add_lora, load_policy

    lm, tokenizer = load_policy(model_name, device=device, dtype=dtype if lora_r > 0 else "float32")
    if lora_r > 0:
        # dropout 0: the rollout's log-probs and the update's must come from the same function
        lm = add_lora(lm, r=lora_r, alpha=lora_alpha, dropout=0.0, top_layers=lora_layers)
        model = PolicyWithValue(lm)
    else:
        reference, _ = load_policy(model_name, device=device)
        reference.requires_grad_(False)
        model = PolicyWithValue(lm, reference)
    model.to(device)
    model.eval()  # no dropout anywhere, also during updates ([N-det])
    return model, tokenizer


def load_aligned(policy_dir: str | Path, *, device: str = "cpu", dtype: str = "float32"):
    """(causal LM, tokenizer, PPO config dict) of a trained policy folder (RUN_DIR/policy), LoRA merged into the
    weights (W ← W + (α/r)·B·A): a plain transformers model, no peft, no value head — what you serve or export."""
    import yaml

    from rlhfkit.models.load import resolve_dtype

    folder = Path(policy_dir)
    path = folder / "config.yaml"
    if not path.exists() or not (folder / TRAINABLE_FILE).exists():
        raise RlhfkitError(f"{folder}: no trained policy (run `rlhfkit ppo` first)")
    config = yaml.safe_load(path.read_text())
    lora = config["lora_r"] > 0
    model, tokenizer = build_policy(config["model"], lora_r=config["lora_r"], lora_alpha=config["lora_alpha"],
                                    device=device, lora_layers=config.get("lora_layers", 0),
                                    dtype=resolve_dtype(dtype, device) if lora else "float32")
    model.load_trained(folder)
    lm = model.lm.merge_and_unload() if lora else model.lm
    lm.eval()
    return lm, tokenizer, config
