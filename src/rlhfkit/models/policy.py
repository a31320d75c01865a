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
from rlhfkit.models.prefix import FrozenPrefix, head_input
from rlhfkit.models.unwrap import as_reference

TRAINABLE_FILE = "trainable.safetensors"


def position_ids(attention_mask: Tensor) -> Tensor:
    """(B, T) positions counted over real tokens only: left padding must not shift them.

    Generation computes positions this way; recomputing log-probs without it gives ρ ≠ 1 at step 0.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


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

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, n_response: int, temperature: float,
                prefix: Tensor | None = None, packed: Packed | None = None) -> tuple[Tensor, Tensor]:
        """Logits predicting each response token and the value of the state before it.

        input_ids, attention_mask: (B, T) = prompt (left-padded) + response (right-padded), T = P + A.
        prefix: (B, T, H) output of the frozen lower blocks for these rows (``frozen_prefix``), or None.
        packed: another layout (``Packed``; attention_mask and n_response unused): A = len(packed.keep).
        Returns logits (B, A, V) scaled by 1/temperature, values (B, A).
        """
        with head_input(self.lm) as box, self.prefix.reuse(prefix):
            out = self.lm(**self._inputs(input_ids, attention_mask, n_response, packed))
        logits = self._predicting(out.logits, packed).float() / temperature  # (B, A, V)
        hidden = self._predicting(box[-1], packed)  # (B, A, H): the state before each response token
        values = self.value_head(hidden.float()).squeeze(-1)  # (B, A)
        return logits, values

    @torch.no_grad()
    def reference_logits(self, input_ids: Tensor, attention_mask: Tensor | None, n_response: int, temperature: float,
                         prefix: Tensor | None = None, packed: Packed | None = None) -> Tensor:
        """(B, A, V) logits of the frozen reference: the base with adapters off, or the separate copy.

        prefix, packed: as in ``forward`` — the frozen lower blocks are the same for policy and reference.
        """
        kwargs = self._inputs(input_ids, attention_mask, n_response, packed)
        if self.reference is not None:
            with head_input(self.reference):
                out = self.reference(**kwargs)
        else:
            with as_reference(self.lm), self.prefix.reuse(prefix), head_input(self.lm):
                out = self.lm(**kwargs)
        return self._predicting(out.logits, packed).float() / temperature

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
