"""Tiny randomly-initialised models, built locally, for tests, smoke runs and benchmarks.

Three architectures (Llama, GPT-2 and Qwen2 style) share one small byte-level BPE tokenizer
trained on generated sentences, with a chat template, so nothing here needs a model hub.
"""

from __future__ import annotations

import random
from pathlib import Path

ARCHITECTURES = ("llama", "gpt2", "qwen2")

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
_WORDS = (
    "the a cat dog bird house tree river sun moon city road friend teacher child book music idea question answer "
    "happy sad kind rude polite quick slow big small good bad bright dark warm cold helpful honest harmful "
    "runs sees likes helps reads writes sings thinks asks says gives makes finds wants needs knows "
    "what why how when where who please thank you hello sorry yes no maybe always never often today tomorrow"
).split()


def _corpus(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) + rng.choice([".", "?", "!"]) for _ in range(n_lines)]


def build_tokenizer(vocab_size: int = 512, seed: int = 0):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with chat template; EOS = <|im_end|>, pad = <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(_corpus(4000, seed), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def build_model(arch: str, vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0, eos_id: int, pad_id: int, bos_id: int):
    """A randomly-initialised causal LM of the given architecture (dropout 0)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=bos_id)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=heads // 2, max_position_embeddings=512, tie_word_embeddings=True, **common)
        return LlamaForCausalLM(cfg)
    if arch == "qwen2":
        cfg = Qwen2Config(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=heads // 2, max_position_embeddings=512, tie_word_embeddings=True, **common)
        return Qwen2ForCausalLM(cfg)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512, resid_pdrop=0.0, embd_pdrop=0.0,
                         attn_pdrop=0.0, **common)
        return GPT2LMHeadModel(cfg)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHITECTURES}")


def save_tiny(folder: str | Path, arch: str = "llama", *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Build and save a tiny model with its tokenizer into ``folder``; returns the folder."""
    from transformers import GenerationConfig

    folder = Path(folder)
    tok = build_tokenizer(seed=seed)
    model = build_model(arch, len(tok), hidden=hidden, layers=layers, seed=seed, eos_id=tok.eos_token_id,
                        pad_id=tok.pad_token_id, bos_id=tok.bos_token_id)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.bos_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
