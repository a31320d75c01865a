"""Two forward-pass helpers of the PPO policy, each one small component with a plain fallback.

``FrozenPrefix``: with LoRA on the top N blocks only (``lora_layers``), the blocks below are frozen
and identical in the policy and the reference, so their output for a rollout never changes during
the rollout's update epochs. ``compute`` runs them once (a forward hook on the last frozen block
captures its output and stops the pass); ``reuse`` swaps the frozen blocks for a stub that returns
that output, so the policy forward of every epoch and the reference forward skip them. On
SmolLM2-135M with the top 8 of 30 blocks adapted that is 22/30 of each forward. When the model does
not qualify (every block adapts, full fine-tuning, weights trained below the adapted blocks, a block
that does not return a plain tensor) ``n_frozen`` is 0, ``compute`` returns None and callers run
plain forwards. A sampler on the policy's own float32 weights has run those blocks over every token it
saw and drew: ``block_output`` keeps that block's output, so the rollout's ``compute`` pass is skipped.

``head_input``: the value head reads what the LM head reads (the final, normed hidden states). A
forward pre-hook on the LM head hands over a contiguous copy of it, so the model does not have to
collect every layer's hidden states; with ``logits_to_keep`` the head's input is a strided slice,
which torch multiplies as a batched matmul over a broadcast weight, ~1.7× slower on CPU than one
matmul on a contiguous copy (SmolLM2-135M: 0.35 vs 0.21 s a call, forward and backward alike).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

from rlhfkit.data.errors import RlhfkitError


class _PrefixDone(Exception):
    """Raised by the capture hook to end a forward pass after the frozen blocks."""


class _Constant(nn.Module):
    """Stands in for a frozen block inside ``FrozenPrefix.reuse``: returns the cached output."""

    def __init__(self, output: Tensor):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs) -> Tensor:
        return self.output


def shared_prefix_length(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own (its last one is fed to
    the model to predict the first response token)."""
    L = min(map(len, rows)) - 1
    for i in range(max(L, 0)):
        if any(row[i] != rows[0][i] for row in rows):
            return i
    return max(L, 0)


def frozen_blocks(lm: nn.Module) -> tuple[nn.ModuleList | None, int]:
    """(the transformer blocks, how many of the lowest are frozen); (None, 0) when caching cannot apply.

    It applies when every trainable weight of ``lm`` sits in the blocks from the lowest adapted one up
    (so everything below is the same function in policy and reference for the whole run).
    """
    n_layers = lm.config.get_text_config().num_hidden_layers
    lists = [m for m in lm.modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if len(lists) != 1:
        return None, 0
    blocks = lists[0]
    trainable = [i for i, b in enumerate(blocks) if any(p.requires_grad for p in b.parameters())]
    if not trainable or trainable[0] == 0:
        return None, 0
    above = {id(p) for b in blocks[trainable[0] :] for p in b.parameters()}
    if any(p.requires_grad and id(p) not in above for p in lm.parameters()):
        return None, 0
    return blocks, trainable[0]


class FrozenPrefix:
    """Compute the frozen lower blocks' output once per rollout and reuse it (see the module doc)."""

    def __init__(self, lm: nn.Module, enabled: bool = True):
        blocks, self.n_frozen = frozen_blocks(lm) if enabled else (None, 0)
        self._blocks = (blocks,)  # a tuple: not registered as a second path to the same parameters

    @property
    def last_block(self) -> nn.Module | None:
        """The last frozen block, whose output ``compute`` returns; None when caching does not apply. A sampler
        that keeps this block's output at every token (generate.sample_ids ``keep_block``) has computed the same."""
        return self._blocks[0][self.n_frozen - 1] if self.n_frozen else None

    def compute(self, lm: nn.Module, **forward_kwargs) -> Tensor | None:
        """(B, T, H) output of the last frozen block for these inputs, or None when caching does not apply."""
        if self.n_frozen == 0:
            return None
        box: list = []

        def stop(_module, _args, output):
            box.append(output)
            raise _PrefixDone

        hook = self._blocks[0][self.n_frozen - 1].register_forward_hook(stop)
        try:
            lm(**forward_kwargs, use_cache=False)
        except _PrefixDone:
            pass
        finally:
            hook.remove()
        if not box:
            raise RlhfkitError(f"{type(lm).__name__}: the forward pass never reached transformer block "
                               f"{self.n_frozen - 1}, so its output cannot be cached (set lora_layers to 0)")
        if not isinstance(box[0], Tensor):  # an older block returning a tuple: fall back to plain forwards
            self.n_frozen = 0
            return None
        return box[0]

    @contextlib.contextmanager
    def reuse(self, prefix: Tensor | None) -> Iterator[None]:
        """Within: the frozen blocks return ``prefix`` instead of computing; None = plain forward."""
        if prefix is None or self.n_frozen == 0:
            yield
            return
        blocks = self._blocks[0]
        saved = [blocks[i] for i in range(self.n_frozen)]
        stub = _Constant(prefix)
        for i in range(self.n_frozen):
            blocks[i] = stub
        try:
            yield
        finally:
            for i, block in enumerate(saved):
                blocks[i] = block


@contextlib.contextmanager
def head_input(lm: nn.Module, rows: Tensor | None = None) -> Iterator[list[Tensor]]:
    """Within: the LM head gets a contiguous copy of its input, also appended to the yielded list.

    ``rows``: a boolean mask over the head input's leading dimensions (B, K): the head then runs on the
    selected positions only, (N, H) → logits (N, V), while the list still gets the whole input (the value
    head reads every position). Raises RlhfkitError on exit if the head was never called (a model whose LM
    head is not its output embedding), rather than leaving the caller an empty list to index.
    """
    box: list[Tensor] = []

    def pre_hook(_module, args):
        box.append(args[0].contiguous())
        return (box[-1] if rows is None else box[-1][rows], *args[1:])

    hook = lm.get_output_embeddings().register_forward_pre_hook(pre_hook)
    try:
        yield box
    finally:
        hook.remove()
    if not box:
        raise RlhfkitError(f"{type(lm).__name__}: the LM head was not called in the forward pass, so the value "
                           "head has no hidden states to read")


@contextlib.contextmanager
def block_output(block: nn.Module) -> Iterator[list[Tensor]]:
    """Within: every output of ``block`` is appended to the yielded list, as long as the block returns a plain
    tensor; from its first output that is not one (an older block returning a tuple) the list is emptied and
    stays empty, so callers fall back to computing the states themselves."""
    box: list[Tensor] = []
    plain = [True]

    def hook(_module, _args, output):
        plain[0] = plain[0] and isinstance(output, Tensor)
        if plain[0]:
            box.append(output)
        else:
            box.clear()

    handle = block.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()
