"""What the alignment survives: deployment variants of the aligned policy against it, on held-out prompts.

``rlhfkit eval --variants fp32,int8,gguf_q8_0`` (and ``bench/deploy.py``) build each variant from the merged
float32 policy (``load_aligned``) the way ``rlhfkit export`` makes it, in a temporary folder:

  fp32          the merged policy (transformers folder, float32): reproduces the aligned policy exactly
  bf16          cast to bfloat16 (fast only on CPUs with AVX512-BF16/AMX; emulated, slower, elsewhere)
  int8          weight-only per-channel int8 linears (``export --quantize int8``; size = model.int8.safetensors)
  int8_dynamic  torch.ao dynamic int8: int8 activations too (``export --quantize int8-dynamic``)
  gguf_q8_0     written as GGUF Q8_0, read back by transformers' GGUF loader — which de-quantises to
                float32, so its speed and memory are fp32's; its size is the .gguf file's
  prune50       50% of every block linear's weights zeroed by magnitude (stored dense: fp32's size)
  prune50_lora  prune50, then ``recover_steps`` LoRA distillation steps towards the policy on its own
                samples of the run's train prompts (``export --sparsity 0.5 --recover-steps N``)
  mlp50         50% of the MLP channels removed (a smaller model)
  NAME=DIR      any exported transformers folder (``rlhfkit distil`` student, an ``export`` folder, int8 too)

Per variant, on the first ``num_prompts`` eval-split prompts × ``samples``, on the CPU: size on disk of the
weights; new tokens/s at batch 1 (the first ``batch1_prompts`` prompts one at a time) and at batch 16
(rlhfkit's sampler, the policy's own sampling settings, new tokens counted up to EOS); peak memory = peak
resident set while the variant is built and samples at batch 16, minus the resident set before (the
aligned policy and the scorers stay loaded; polled every 5 ms); gold score and toxicity (P(offensive), the
gold scorer's component) of its completions; KL(aligned ‖ variant) in nats per completion, exact over the
vocabulary at every token of the *aligned* policy's own completions (at the sampling temperature:
losses.distillation_loss's soft term); gold win rate against the aligned policy's completions of the same
prompts (ties ½). Intervals: 95% bootstrap over prompts. Every variant samples with the aligned policy's
seeds, so fp32 reproduces it (KL 0, win 50%). Timings move with whatever else runs on the machine.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from rlhfkit.config import DEPLOY_VARIANTS as VARIANTS
from rlhfkit.data.errors import RlhfkitError
from rlhfkit.eval.fmt import as_dict, finite, fmt_interval, fmt_num

DEFAULT = "fp32,bf16,int8,int8_dynamic,gguf_q8_0,prune50,prune50_lora"
BATCH = 16  # the serving batch the table reports next to batch 1
_EXPORT_OPTIONS = {"fp32": {}, "bf16": {"dtype": "bfloat16"}, "int8": {"quantize": "int8"},
                   "int8_dynamic": {"quantize": "int8-dynamic"}, "prune50": {"sparsity": 0.5},
                   "prune50_lora": {"sparsity": 0.5}, "mlp50": {"sparsity": 0.5, "structured": True}}
"""Variant → rlhfkit.deploy.export.prepare's arguments (gguf_q8_0 is written by gguf_file instead)."""


def split_names(spec: str) -> list[str]:
    return [v.strip() for v in spec.split(",") if v.strip()]


def parse_folders(spec: str) -> dict[str, str]:
    """'NAME=DIR,NAME=DIR' → {NAME: DIR}; a malformed item or a clash with a built-in name is an error."""
    out: dict[str, str] = {}
    for item in split_names(spec):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise RlhfkitError(f"variant_folder: {item!r} is not NAME=DIR")
        if name.strip() in VARIANTS or name.strip() in out:
            raise RlhfkitError(f"variant_folder: the name {name.strip()!r} is already taken")
        out[name.strip()] = path.strip()
    return out


def check_names(names: list[str]) -> None:
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise RlhfkitError(f"variants: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")


def check_folder(name: str, path: str | Path, vocab_size: int | None = None) -> None:
    """Raise unless ``path`` is a transformers model folder (config.json + weights) with the policy's vocabulary."""
    from transformers import AutoConfig

    folder = Path(path)
    where = f"variant_folder {name}={path}"
    if not folder.is_dir():
        raise RlhfkitError(f"{where}: no such folder")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise RlhfkitError(f"{where}: not a transformers model folder ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not list(folder.glob("*.safetensors")):
        raise RlhfkitError(f"{where}: no *.safetensors weights (an `rlhfkit export` or `rlhfkit distil` folder has them)")
    if vocab_size is not None and getattr(config, "vocab_size", None) != vocab_size:
        raise RlhfkitError(f"{where}: vocab_size {getattr(config, 'vocab_size', None)} is not the aligned policy's "
                           f"{vocab_size} (KL to the policy needs the same tokenizer)")


def rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident set above the level at entry, polled in a thread (``with PeakRSS() as p: …; p.bytes``)."""

    def __init__(self, every: float = 0.005):
        self.every, self.bytes = every, 0

    def __enter__(self):
        self.base, self.peak, self._stop = rss(), rss(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.bytes = max(self.peak, rss()) - self.base


def build(name: str, merged, tok, config: dict, folder: Path, recover_steps: int):
    """(runtime model, bytes of weights on disk) of one variant, its export written into ``folder``."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from rlhfkit.deploy.distil import recover
    from rlhfkit.deploy.export import prepare, write_hf
    from rlhfkit.deploy.gguf_file import write_gguf

    sampling = dict(config["sampling"])
    folder.mkdir(parents=True)
    if name == "gguf_q8_0":
        write_gguf(merged, tok, folder / "model.q8_0.gguf", "q8_0", sampling)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.q8_0.gguf", dtype=torch.float32)
        return model.eval(), (folder / "model.q8_0.gguf").stat().st_size
    opts = _EXPORT_OPTIONS[name]
    model = prepare(copy.deepcopy(merged), **opts)
    if name == "prune50_lora":
        model, _ = recover(model, merged, tok, config, steps=recover_steps)
    write_hf(model, tok, folder, sampling, int8="quantize" in opts)
    return model.eval(), _weight_bytes(folder)


def load_folder(path: str | Path):
    """(model, bytes of weights) of an exported folder: int8 exports through their own loader."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhfkit.deploy.quantize import INT8_FILE, load_int8
    from rlhfkit.models.load import fuse_activations

    folder = Path(path)
    if (folder / INT8_FILE).exists():
        return load_int8(folder), _weight_bytes(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    fuse_activations(model)  # as every model rlhfkit loads: the same function as the policy's to ~1e-7
    return model, _weight_bytes(folder)


def _weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def run_sampler(model, tok, texts: list[str], batch: int, sampling: dict, seed: int):
    """(samples per batch, new tokens, seconds) with rlhfkit's sampler; batch i seeded with seed + i."""
    import torch

    from rlhfkit.generate import eos_ids, response_length, sample

    out, tokens, seconds = [], 0, 0.0
    for i, lo in enumerate(range(0, len(texts), batch)):
        torch.manual_seed(seed + i)
        t0 = time.perf_counter()
        s = sample(model, tok, texts[lo : lo + batch], max_new_tokens=sampling["max_new_tokens"],
                   temperature=sampling["temperature"], top_p=sampling.get("top_p", 1.0), top_k=sampling.get("top_k", 0))
        seconds += time.perf_counter() - t0
        tokens += int(response_length(s.response_ids, eos_ids(tok, model)).sum())
        out.append(s)
    return out, tokens, seconds


def completions(model, tok, samples) -> list[str]:
    from rlhfkit.generate import decode_responses, eos_ids, response_length

    stop = eos_ids(tok, model)
    return [c for s in samples for c in decode_responses(tok, s.response_ids, response_length(s.response_ids, stop))]


def kl_per_completion(aligned, variant, tok, s, temperature: float) -> list[float]:
    """Σ_t KL(aligned_T ‖ variant_T) per completion of the aligned policy's sample ``s`` (B values)."""
    import torch

    from rlhfkit.generate import assemble, eos_ids
    from rlhfkit.models.policy import position_ids
    from rlhfkit.train.losses import distillation_loss

    _, response_mask, input_ids, attention_mask = assemble(s, eos_ids(tok, aligned))
    A = response_mask.shape[1]
    logits = []
    with torch.no_grad():
        for m in (aligned, variant):
            out = m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
            logits.append(out.logits[:, -A - 1 : -1].float())  # (B, A, V): the logits that predicted each response token
    out = []
    for i in range(input_ids.shape[0]):  # α = 0, normalizer 1: only the soft term, T²·Σ_t KL of row i — T² divided back out
        row = slice(i, i + 1)
        loss, _ = distillation_loss(logits[1][row], logits[0][row], s.response_ids[row], response_mask[row],
                                    temperature, 0.0, normalizer=1.0)
        out.append(float(loss) / temperature**2)
    return out


def compare_variants(policy_dir: str | Path, names: list[str], folders: dict[str, str] | None = None, *,
                     prompts: str | None = None, num_prompts: int = 16, samples: int = 2, batch1_prompts: int = 2,
                     recover_steps: int = 30, seed: int = 0, echo=None) -> dict:
    """{"settings", "rows"}: every variant measured against the aligned policy in ``policy_dir`` (module docstring).

    ``prompts``: the prompt spec whose eval split is used (None = the one the policy was trained with).
    ``echo``: called with a line per finished variant (progress), or None.
    """
    import tempfile

    import torch

    from rlhfkit.eval import metrics as M
    from rlhfkit.eval.run import eval_prompts
    from rlhfkit.feedback.gold import GoldScorer
    from rlhfkit.machine import cpu_line
    from rlhfkit.models.load import format_prompt
    from rlhfkit.models.policy import load_aligned

    t_start = time.perf_counter()
    folders = folders or {}
    check_names(names)
    if not names and not folders:
        raise RlhfkitError("variants: name at least one variant (or a variant_folder)")
    merged, tok, config = load_aligned(policy_dir)
    for name, path in folders.items():
        check_folder(name, path, merged.config.vocab_size)
    sampling = dict(config["sampling"])
    spec = prompts or config.get("prompts", "default")
    rows_ = eval_prompts(spec, num_prompts, samples, samples)
    texts = [format_prompt(tok, p.prompt, sampling.get("system_prompt", "")) for p, _ in rows_]
    raw = [p.prompt for p, _ in rows_]
    groups = [p.id for p, _ in rows_]  # intervals resample prompts: a prompt's samples move together
    gold = GoldScorer()
    aligned_samples = run_sampler(merged, tok, texts, BATCH, sampling, seed)[0]
    aligned_gold = gold.components(raw, completions(merged, tok, aligned_samples))["score"]
    stat = lambda v: M.summary(v, seed=seed, groups=groups)  # noqa: E731
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names + list(folders):
            t0 = time.perf_counter()
            with PeakRSS() as peak:
                if name in folders:
                    model, size = load_folder(folders[name])
                else:
                    model, size = build(name, merged, tok, config, Path(tmp) / name, recover_steps)
                got, n16, s16 = run_sampler(model, tok, texts, BATCH, sampling, seed)
            _, n1, s1 = run_sampler(model, tok, texts[: batch1_prompts * samples : samples], 1, sampling, seed)
            comps = gold.components(raw, completions(model, tok, got))
            kl = [k for s in aligned_samples for k in kl_per_completion(merged, model, tok, s, sampling["temperature"])]
            rows.append({"name": name, "source": folders.get(name, "built"), "size_bytes": size,
                         "tokens_per_s_b1": n1 / s1, "tokens_per_s_b16": n16 / s16, "peak_rss_bytes": peak.bytes,
                         "gold": stat(comps["score"]), "toxicity": stat(comps["toxicity"]), "kl": stat(kl),
                         "gold_win_vs_aligned": M.paired_win_rate(comps["score"], aligned_gold, seed=seed, groups=groups),
                         "seconds": time.perf_counter() - t0})
            del model
            if echo:
                echo(f"  {name}: {rows[-1]['seconds']:.0f} s  {markdown_table({'rows': rows}).splitlines()[-1]}")
    settings = {"policy": str(policy_dir), "base_model": config.get("model"), "prompts": spec,
                "n_prompts": len(set(groups)), "samples_per_prompt": samples, "n_completions": len(texts),
                "batch1_prompts": batch1_prompts, "max_new_tokens": sampling["max_new_tokens"],
                "temperature": sampling["temperature"], "recover_steps": recover_steps, "seed": seed,
                "cpu": cpu_line(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                "compute": "float32 activations (bf16 and int8 rows: their own kernels)",
                "seconds": time.perf_counter() - t_start}
    return {"settings": settings, "rows": rows}


# ---------------------------------------------------------------------------------------------------------
# Reading the table: markdown (terminal, bench) and the report's section (strings; Jinja escapes them)
# ---------------------------------------------------------------------------------------------------------

COLUMNS = ("variant", "size MB", "tok/s b=1", "tok/s b=16", "peak MB", "gold", "toxicity", "KL nats/compl.",
           "gold win vs aligned [95%]")


def _cells(r: dict, base: dict | None) -> list[str]:
    """One row as text; sizes and speeds with their ratio to the fp32 row when there is one."""
    def ratio(key: str, scale: float = 1.0) -> str:
        v = r.get(key)
        text = fmt_num(v / scale) if finite(v) else "—"
        b = base.get(key) if base else None
        return text + (f" ({v / b:.2f}×)" if finite(v) and finite(b) and b > 0 else "")

    win = as_dict(r.get("gold_win_vs_aligned"))
    pct = lambda x: f"{100 * x:.0f}%" if finite(x) else "—"  # noqa: E731
    win_text = pct(win.get("value")) + (f" [{pct(win['lo'])}, {pct(win['hi'])}]" if finite(win.get("lo")) else "")
    peak = r.get("peak_rss_bytes")
    return [str(r.get("name", "?")), ratio("size_bytes", 1e6), ratio("tokens_per_s_b1"), ratio("tokens_per_s_b16"),
            fmt_num(peak / 1e6) if finite(peak) else "—", fmt_interval(r.get("gold")), fmt_interval(r.get("toxicity")),
            fmt_interval(r.get("kl")), win_text]


def table_rows(section: dict) -> list[list[str]]:
    rows = [r for r in section.get("rows", []) if isinstance(r, dict)]
    base = next((r for r in rows if r.get("name") == "fp32"), None)
    return [_cells(r, base) for r in rows]


def markdown_table(section: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 2) + "---|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in table_rows(section)])


def variants_section(ev: dict | None) -> dict | None:
    """The report's "what the alignment survives" section from eval.json (None when it has no variants)."""
    section = as_dict(as_dict(ev).get("variants"))
    if not section:
        return None
    s = as_dict(section.get("settings"))
    note = (f"{s.get('n_completions', '?')} completions of {s.get('n_prompts', '?')} held-out prompts, "
            f"{s.get('max_new_tokens', '?')} new tokens at T {s.get('temperature', '?')}, on {s.get('cpu', '?')} "
            f"with {s.get('threads', '?')} threads, seed {s.get('seed', '?')}")
    return {"columns": COLUMNS, "rows": table_rows(section), "note": note}


# ---------------------------------------------------------------------------------------------------------
# The eval stage with variants: before/after evaluation, then the table added to eval.json and the report
# ---------------------------------------------------------------------------------------------------------


def _eval_json(run_dir: Path) -> Path:
    return run_dir / "eval" / "eval.json"


def check_inputs(cfg) -> Path:
    """Everything the comparison needs, checked before anything runs; returns the policy folder."""
    from rlhfkit.models.policy import TRAINABLE_FILE

    policy_dir = Path(cfg.policy) if cfg.policy else Path(cfg.run_dir) / "policy"
    if not (policy_dir / TRAINABLE_FILE).exists() or not (policy_dir / "config.yaml").exists():
        raise RlhfkitError(f"{policy_dir}: no trained policy to compare variants with (run `rlhfkit ppo` first, "
                           f"or pass --policy)")
    import yaml
    from transformers import AutoConfig

    from rlhfkit.deploy.gguf_file import check_gguf_support
    from rlhfkit.models.load import resolve

    names = split_names(cfg.variants)
    check_names(names)
    base = AutoConfig.from_pretrained(resolve(yaml.safe_load((policy_dir / "config.yaml").read_text())["model"]))
    if "gguf_q8_0" in names:
        check_gguf_support(base)
    for name, path in parse_folders(cfg.variant_folder).items():
        check_folder(name, path, base.vocab_size)
    path = _eval_json(Path(cfg.run_dir))
    if cfg.variants_only:
        if not path.exists():
            raise RlhfkitError(f"{path}: does not exist; --variants-only adds the table to a finished evaluation "
                               f"(run `rlhfkit eval` first, or drop --variants-only)")
        if "variants" in _read(path) and not cfg.force:
            raise RlhfkitError(f"{path}: already has a variants table (use --force to replace it)")
    return policy_dir


def _read(path: Path) -> dict:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RlhfkitError(f"{path}: could not read it ({exc})") from None
    if not isinstance(data, dict):
        raise RlhfkitError(f"{path}: not a JSON object")
    return data


def run_eval_with_variants(cfg, echo=None) -> dict:
    """``rlhfkit eval``: the before/after evaluation (unless ``variants_only``), then, when variants are named,
    the table as eval.json's "variants" section (the file replaced atomically) and in the report."""
    from rlhfkit.data.io import atomic_write_json
    from rlhfkit.eval.run import run_eval

    wanted = bool(split_names(cfg.variants) or split_names(cfg.variant_folder))
    if not wanted:
        return run_eval(cfg)
    policy_dir = check_inputs(cfg)  # before the evaluation: a bad name or folder costs nothing
    if not cfg.variants_only:
        run_eval(cfg)
    section = compare_variants(policy_dir, split_names(cfg.variants), parse_folders(cfg.variant_folder),
                               prompts=cfg.prompts, num_prompts=cfg.variant_prompts, samples=cfg.variant_samples,
                               batch1_prompts=cfg.variant_batch1_prompts, recover_steps=cfg.variant_recover_steps,
                               seed=cfg.seed, echo=echo)
    path = _eval_json(Path(cfg.run_dir))
    data = _read(path)
    data["variants"] = section
    atomic_write_json(path, data)
    if cfg.report:
        from rlhfkit.eval.report import write_report

        data["report"] = str(write_report(cfg.run_dir))
    return data
