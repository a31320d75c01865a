"""Post-training pruning of a causal LM: magnitude (unstructured) and MLP channels (structured).

Unstructured: in each linear layer of the transformer blocks, the ``sparsity`` share of weights with
the smallest |w| become exactly 0 (torch.nn.utils.prune.l1_unstructured, layer by layer, made
permanent). The file does not shrink (dense storage); it is the accuracy side of sparse kernels.

Structured: in each gated MLP (gate/up/down, as in Llama and Qwen2), the ``sparsity`` share of
intermediate channels with the smallest ‖gate_i‖·‖up_i‖·‖down_:,i‖ are removed, so the model is
really smaller and faster: channel i adds down_:,i · silu(gate_i·x)·(up_i·x), whose size that product
bounds (|silu(z)| ≤ |z|). Every block keeps the same number, so ``intermediate_size`` stays one number.
"""

from __future__ import annotations

from rlhfkit.data.errors import RlhfkitError


def check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise RlhfkitError(f"sparsity must be in [0, 1) (the share of weights removed), got {sparsity}")


def _block_linears(model) -> list:
    from torch import nn

    out_head = model.get_output_embeddings()
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m is not out_head]


def prune_magnitude(model, sparsity: float):
    """Zero the ``sparsity`` share of smallest-|w| weights of every block linear layer, in place; returns model."""
    from torch.nn.utils import prune

    check_sparsity(sparsity)
    linears = _block_linears(model)
    if not linears:
        raise RlhfkitError(f"magnitude pruning works on nn.Linear layers; {type(model).__name__} has none")
    if sparsity == 0.0:
        return model
    for m in linears:
        prune.l1_unstructured(m, "weight", amount=sparsity)
        prune.remove(m, "weight")  # weight = weight_orig · mask, a plain parameter again
    return model


def _gated_mlps(model) -> list:
    mlps = [m for m in model.modules() if all(hasattr(m, k) for k in ("gate_proj", "up_proj", "down_proj"))]
    if not mlps:
        raise RlhfkitError(f"structured pruning removes channels of gated MLPs (gate/up/down projections); "
                           f"{type(model).__name__} has none")
    return mlps


def prune_mlp_channels(model, sparsity: float):
    """Remove the ``sparsity`` share of intermediate channels of every gated MLP, in place; returns model.

    config.intermediate_size becomes the kept count, so ``save_pretrained`` writes a smaller model that
    ``AutoModelForCausalLM`` loads as is.
    """
    import torch
    from torch import nn

    check_sparsity(sparsity)
    mlps = _gated_mlps(model)
    size = mlps[0].gate_proj.out_features
    keep = max(1, round(size * (1.0 - sparsity)))
    if keep == size:
        return model
    for mlp in mlps:
        g, u, d = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        with torch.no_grad():
            score = g.weight.norm(dim=1) * u.weight.norm(dim=1) * d.weight.norm(dim=0)  # (I,)
            kept = torch.topk(score, keep).indices.sort().values  # (keep,), original order
            for name, lin, dim in (("gate_proj", g, 0), ("up_proj", u, 0), ("down_proj", d, 1)):
                w = lin.weight.index_select(dim, kept)
                new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, dtype=w.dtype, device=w.device)
                new.weight.copy_(w)
                if lin.bias is not None:
                    new.bias.copy_(lin.bias.index_select(0, kept) if dim == 0 else lin.bias)
                setattr(mlp, name, new)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = keep
    model.config.intermediate_size = keep
    return model


def sparsity_of(model) -> float:
    """Share of exactly-zero weights over the block linear layers (what magnitude pruning sets)."""
    linears = _block_linears(model)
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    return zeros / sum(m.weight.numel() for m in linears)
