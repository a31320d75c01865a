"""The reward model's forward as one ``nn.Module``: encoded rows in, (N,) raw rewards out.

``RewardModel`` keeps the Hugging Face model and its tokenizer; this module is what runs, so that one
``forward`` covers both poolings (mean pooling calls the encoder and the head, not the model's own forward)
and DDP or FSDP2 can wrap it (train/dist.py): DDP synchronises only through a wrapper's forward, and FSDP2
gathers the weights outside the decoder blocks only in its root's forward. Imported lazily (it imports torch).
"""

from __future__ import annotations

from torch import Tensor, nn

from rlhfkit.models.reward import _encoder_and_head


class RewardNet(nn.Module):
    """``model`` (a sequence classifier, possibly a peft wrapper) read with ``pooling`` ("mean" or "cls")."""

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        self.model = model
        self.pooling = pooling

    def forward(self, input_ids: Tensor, attention_mask: Tensor, **rest: Tensor) -> Tensor:
        """(N,) float32 raw rewards of a padded batch (each input (N, T))."""
        if self.pooling == "mean":
            encoder, head = _encoder_and_head(self.model)
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, **rest).last_hidden_state  # (N, T, H)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
            logits = head((hidden * mask).sum(1) / mask.sum(1))  # mean over real tokens → (N, 1)
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **rest).logits  # (N, 1)
        return logits.squeeze(-1).float()  # (N,)
