"""The ``rlhfkit`` command: one sub-command per pipeline stage.

Thin by design: parse, build the stage's config (defaults ← --config YAML ← options), call the
stage function, print a summary. Heavy libraries are imported inside the stage functions, so
``rlhfkit --help`` is instant.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from rlhfkit.config import (
    AppsEvalConfig,
    AskConfig,
    CaiLabelConfig,
    CaiReviseConfig,
    DpoConfig,
    KNOWN_SECTIONS,
    DistilConfig,
    DoctorConfig,
    EvalConfig,
    ExportConfig,
    GenerateConfig,
    LabelConfig,
    PairsConfig,
    PPOConfig,
    RagIndexConfig,
    RewardConfig,
    ScoreConfig,
    ServeConfig,
    SftConfig,
    build_config,
    config_fields,
    field_types,
    gather_config,
    load_config,
)
from rlhfkit.data.errors import RlhfkitError

app = typer.Typer(
    help="rlhfkit: the whole RLHF loop: generate → label → pairs → train-rm → ppo → eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from rlhfkit import __version__

        typer.echo(f"rlhfkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                       callback=_print_version)) -> None:
    """rlhfkit: the whole RLHF loop: generate → label → pairs → train-rm → ppo → eval."""


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def run_stage(fn: Callable, *args, **kwargs):
    """Call a stage; a user-fixable error becomes one line on stderr and exit code 2."""
    # No model hub unless the user asks (HF_HUB_OFFLINE=0): without a network a hub lookup stalls; a hub id
    # given while offline is refused with that advice (models.load.resolve).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return fn(*args, **kwargs)
    except RlhfkitError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted: finished artifacts are kept; re-run to continue", err=True)
        raise typer.Exit(code=130)


TRL_NAMES = {"lr": ("--learning-rate",), "epochs": ("--num-train-epochs",), "run_dir": ("--output-dir",),
             "max_new_tokens": ("--response-length",), "clip_eps": ("--cliprange",),
             "clip_eps_high": ("--epsilon-high",), "kl_bias_correction": ("--use-bias-correction-kl",)}
"""TRL's names for our options, accepted as aliases (a TRL user's muscle memory works; --help lists both)."""


def stage_command(name: str, config_cls: type, section: str | None = None, group: typer.Typer | None = None,
                  target: typer.Typer | None = None):
    """Register ``fn(cfg)`` as ``rlhfkit NAME`` with one option per config field (help from the field).

    With ``group``, ``fn`` becomes that group's callback: ``rlhfkit NAME [OPTIONS]`` runs it, and
    ``rlhfkit NAME SUB`` runs the sub-command instead. With ``target``, the command is registered on
    that sub-app (``rlhfkit cai revise``) instead of the top-level app.
    """

    def decorator(fn: Callable) -> Callable:
        types = field_types(config_cls)
        params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)] if group else []
        params += [
            inspect.Parameter(
                "config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                default=typer.Option(None, "--config", "-c", help="YAML file with these fields (or a pipeline YAML)."),
            )
        ]
        for f in config_fields(config_cls):
            flag = "--" + f.name.replace("_", "-")
            trl = TRL_NAMES.get(f.name, ())
            decls = ([f"{x}/--no-{x[2:]}" for x in (flag, *trl)] if types[f.name] is bool else [flag, *trl])
            params.append(inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[types[f.name]],
                # "\[": rich markup would swallow a bare "[default: X]" (the option's own default is None)
                default=typer.Option(None, *decls, help=f"{f.metadata['help']} \\[default: {_shown(f.default)}]",
                                     show_default=False),
            ))

        def command(ctx: typer.Context | None = None, **kwargs):
            if ctx is not None and ctx.invoked_subcommand is not None:
                return
            config_path = kwargs.pop("config")
            overrides = {k: v for k, v in kwargs.items() if v is not None}
            cfg = run_stage(resolve, config_cls, section or name, config_path, overrides)
            run_stage(fn, cfg)

        KNOWN_SECTIONS.add(section or name)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__ = fn.__name__
        command.__doc__ = fn.__doc__
        if group is None:
            (target or app).command(name)(command)
        else:
            group.callback(invoke_without_command=True)(command)
            app.add_typer(group, name=name, help=fn.__doc__)
        return fn

    return decorator


def _shown(default) -> str:
    """How --help shows a default ('' shown as '', so an empty default is visible too)."""
    if isinstance(default, bool):
        return str(default).lower()
    return repr(default) if default == "" else str(default)


def resolve(config_cls: type, section: str, config_path: Path | None, overrides: dict):
    """A stage's config: defaults ← what the run directory remembers ← --config YAML ← options.

    Printing on stderr what came from the run (``run_memory``) and each given value that differs from it.
    """
    import dataclasses

    from rlhfkit.run_memory import Remembered, flat_values, remembered

    explicit = gather_config(config_cls, config_path, overrides, section=section)
    defaults = flat_values(config_cls, dataclasses.asdict(config_cls()))
    run_dir = explicit.get("run_dir", defaults.get("run_dir"))  # a command without a run (serve, ask) has none
    memory = (remembered(section, config_cls, run_dir, resume=bool(explicit.get("resume"))) if run_dir is not None
              else Remembered())
    cfg = build_config(config_cls, {**memory.values, **explicit})
    for line in memory.notes(explicit, defaults):
        typer.echo(line, err=True)
    return cfg


@stage_command("generate", GenerateConfig)
def generate(cfg: GenerateConfig) -> None:
    """Sample K completions per prompt with the policy → RUN_DIR/completions.jsonl."""
    from rlhfkit.generate import run_generate

    s = run_generate(cfg)
    stale = [name for name in ("feedback.db", "pairs.jsonl", "reward_model", "policy", "eval")
             if (Path(cfg.run_dir) / name).exists()]
    if cfg.force and stale:
        typer.echo(f"note: completions.jsonl replaced; {', '.join(stale)} in {cfg.run_dir} were made from the old "
                   "completions: re-run those stages with --force, or start a new --run-dir", err=True)
    if cfg.num_prompts > s["prompts"]:
        typer.echo(f"note: --num-prompts {cfg.num_prompts}, but split '{cfg.split}' of {cfg.prompts} holds only "
                   f"{s['prompts']} prompts: all {s['prompts']} used", err=True)
    typer.echo(
        f"generated {s['completions']} completions for {s['prompts']} prompts "
        f"({s['ended']} ended with EOS) in {s['seconds']:.1f} s, {s['tokens_per_s']:.0f} new tokens/s → {s['path']}"
    )


label_app = typer.Typer(no_args_is_help=False, pretty_exceptions_enable=False)


@stage_command("label", LabelConfig, group=label_app)
def label(cfg: LabelConfig) -> None:
    """Make ranking tasks from completions and have simulated labelers rank them → RUN_DIR/feedback.db.

    Sub-commands: `label report` (agreement, flagged labelers)."""
    from rlhfkit.feedback.label import run_label

    s = run_label(cfg)
    p = s["progress"]
    typer.echo(
        f"{s['tasks_added']} tasks added ({s['tasks_existing']} already there), guideline v{s['guideline_version']}; "
        f"{s['rankings']} rankings by simulated labelers (careless: {', '.join(s['careless']) or 'none'}); "
        f"{p.rankings_done}/{p.rankings_needed} rankings done → {s['store']}"
    )


@label_app.command("report")
def label_report(
    run_dir: str = typer.Option("runs/demo", help="Run directory holding feedback.db."),
    store: str = typer.Option("", help="Feedback store URL or path ('' = RUN_DIR/feedback.db)."),
) -> None:
    """Agreement between labelers (pairwise %, Kendall τ-b, Krippendorff α), quality, flagged labelers."""
    from rlhfkit.feedback.label import run_label_report
    from rlhfkit.feedback.report import print_feedback_report

    report = run_stage(run_label_report, run_dir, store)
    print_feedback_report(report)


@label_app.command("serve")
def label_serve(
    run_dir: str = typer.Option("runs/demo", "--run", "--run-dir", help="Run directory holding feedback.db."),
    store: str = typer.Option("", help="Feedback store URL or path ('' = RUN_DIR/feedback.db)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 = every interface)."),
    port: int = typer.Option(8000, help="Port to listen on."),
) -> None:
    """Serve the labeling web app: people rank completions in a browser (invite them with `label invite`)."""
    from rlhfkit.feedback.web.cli_support import serve

    typer.echo(f"labeling app on http://{host}:{port}/ (Ctrl-C stops it)")
    run_stage(serve, run_dir, store, host, port)


@label_app.command("invite")
def label_invite(
    name: str = typer.Argument(..., help="The labeler's name (unique in the store)."),
    admin: bool = typer.Option(False, "--admin", help="May open the dashboard, import tasks and export pairs."),
    run_dir: str = typer.Option("runs/demo", "--run", "--run-dir", help="Run directory holding feedback.db."),
    store: str = typer.Option("", help="Feedback store URL or path ('' = RUN_DIR/feedback.db)."),
    base_url: str = typer.Option("http://127.0.0.1:8000", help="Where the labelers reach `label serve`."),
    reissue: bool = typer.Option(False, "--reissue", help="A new link for a registered labeler; their old one stops working."),
) -> None:
    """Register a labeler and print their personal sign-in link: it signs in once, within 7 days (only its hash is stored)."""
    from rlhfkit.feedback.web.cli_support import invite

    typer.echo(run_stage(invite, run_dir, store, name, admin, base_url, reissue))


@label_app.command("revoke")
def label_revoke(
    name: str = typer.Argument(..., help="The labeler to sign out."),
    run_dir: str = typer.Option("runs/demo", "--run", "--run-dir", help="Run directory holding feedback.db."),
    store: str = typer.Option("", help="Feedback store URL or path ('' = RUN_DIR/feedback.db)."),
) -> None:
    """Sign a labeler out of every browser and cancel their unused links; their rankings stay."""
    from rlhfkit.feedback.web.cli_support import revoke

    typer.echo(run_stage(revoke, run_dir, store, name))


@stage_command("pairs", PairsConfig)
def pairs(cfg: PairsConfig) -> None:
    """Every pair of every current ranking, preferred first → RUN_DIR/pairs.jsonl (and TRL format)."""
    from rlhfkit.feedback.label import run_pairs

    s = run_pairs(cfg)
    flagged = f"; dropped {s['dropped_rankings']} rankings of flagged labelers {', '.join(s['flagged'])}" if s["flagged"] else ""
    typer.echo(f"{s['pairs']} pairs from {s['rankings']} rankings{flagged} → {s['path']}")


@stage_command("train-rm", RewardConfig, section="train_rm")
def train_rm(cfg: RewardConfig) -> None:
    """Train the reward model on pairs (−log σ(r_chosen − r_rejected)) → RUN_DIR/reward_model/ with eval.json."""
    from rlhfkit.pipeline import describe, train_rm_with_gold

    s = train_rm_with_gold(cfg)
    if not on_rank0():
        return
    typer.echo(describe("train_rm", s))
    for reason in s["skipped"][:5]:
        typer.echo(f"  left out {reason}", err=True)
    if len(s["skipped"]) > 5:
        typer.echo(f"  … and {len(s['skipped']) - 5} more (every one in reward_model/eval.json)", err=True)


@stage_command("score", ScoreConfig)
def score(cfg: ScoreConfig) -> None:
    """Score (prompt, completion) JSONL or lines of text with a trained reward model; adds a 'reward' field."""
    from rlhfkit.train.reward_stage import run_score

    s = run_score(cfg)
    typer.echo(f"scored {s['scored']} text{'s' if s['scored'] != 1 else ''} with {s['model']}", err=True)


def on_rank0() -> bool:
    """Under torchrun only rank 0 prints the run's summary (every rank returns it)."""
    return os.environ.get("RANK", "0") == "0"


@stage_command("ppo", PPOConfig)
def ppo(cfg: PPOConfig) -> None:
    """PPO (or --algorithm rloo|grpo, critic-free) with a KL penalty against the frozen reference, on a LoRA policy → RUN_DIR/policy."""
    from rlhfkit.pipeline import describe
    from rlhfkit.train.ppo import run_ppo

    s = run_ppo(cfg)
    if on_rank0():
        typer.echo(f"{s['algorithm']}: {describe('ppo', s)}, KL {s['kl_last']:.2f}, {s['seconds']:.0f} s → {s['path']}")


@stage_command("dpo", DpoConfig)
def dpo(cfg: DpoConfig) -> None:
    """Direct preference optimisation on pairs (no reward model), LoRA policy, reference = adapters off → RUN_DIR/policy."""
    from rlhfkit.pipeline import describe
    from rlhfkit.train.dpo import run_dpo

    s = run_dpo(cfg)
    if on_rank0():
        typer.echo(f"dpo: {describe('dpo', s)}, {s['seconds']:.0f} s → {s['path']}")


@stage_command("doctor", DoctorConfig)
def doctor(cfg: DoctorConfig) -> None:
    """Estimate memory per rank of a run from the model's config.json (nothing loads); say what to change if it won't fit."""
    from rlhfkit.train.memory import run_doctor

    r = run_doctor(cfg)
    p = r["plan"]
    typer.echo(f"{cfg.stage} on {cfg.model} ({r['params'] / 1e6:.1f} M parameters, {r['trained_params'] / 1e6:.2f} M "
               f"trained), {p['world_size']} × {p['strategy']}, batch {p['batch_size']}, "
               f"{p['prompt_tokens']} + {p['new_tokens']} tokens — per rank:")
    for name, gib in r["parts_gib"].items():
        typer.echo(f"  {name:32s} {gib:8.2f} GiB")
    verdict = "fits" if r["fits"] else "does NOT fit"
    typer.echo(f"  {'total':32s} {r['total_gib']:8.2f} GiB — {verdict} in {r['device_gib']:.1f} GiB ({r['device']})")
    for fix in r["remedies"]:
        typer.echo(f"  try {fix['change']}: {fix['total_gib']:.2f} GiB{' (fits)' if fix['fits'] else ''}")
    if not r["fits"] and not r["remedies"]:
        typer.echo("  nothing here lowers it enough: use more devices (--world-size) with --strategy fsdp")


@stage_command("eval", EvalConfig)
def evaluate(cfg: EvalConfig) -> None:
    """Reference vs aligned policy on held-out prompts → RUN_DIR/eval/eval.json, samples.jsonl, report.html;
    with --variants, also what the alignment survives: deployment variants against the aligned policy."""
    from rlhfkit.eval.table import print_eval_table
    from rlhfkit.eval.variants import markdown_table, run_eval_with_variants

    result = run_eval_with_variants(cfg, echo=lambda line: typer.echo(line, err=True))
    if "models" in result and not cfg.variants_only:
        print_eval_table(result)
    if "variants" in result:
        typer.echo("what the alignment survives (KL(aligned ‖ variant) in nats per completion):")
        typer.echo(markdown_table(result["variants"]))
    if "report" in result:
        typer.echo(f"report → {result['report']}")


@app.command("pipeline")
def pipeline(
    config: Path = typer.Argument(..., help="Pipeline YAML: run_dir, seed, and one section per stage "
                                   "(generate, label, pairs, train_rm, ppo, eval) with that stage's fields."),
    run_dir: Optional[str] = typer.Option(None, help="Override the run directory of every stage."),
    force: bool = typer.Option(False, "--force", help="Run every stage again, from a fresh feedback store."),
) -> None:
    """Run generate → label → pairs → train-rm → ppo → eval → report; finished stages are skipped."""
    from rlhfkit.pipeline import run_pipeline

    overrides = {"*": {"run_dir": run_dir}} if run_dir else None
    s = run_stage(run_pipeline, config, overrides=overrides, force=force, echo=typer.echo)
    typer.echo(f"pipeline finished in {s['seconds']:.0f} s")


@app.command("demo")
def demo(
    no_kl: bool = typer.Option(False, "--no-kl", help="β = 0: no KL penalty, to watch reward hacking. Writes RUN_DIR-no-kl "
                               "and reuses RUN_DIR's completions, rankings and reward model, so only β differs."),
    algorithm: str = typer.Option("ppo", help="What trains the policy: ppo, rloo, grpo (critic-free) or dpo (on the pairs). "
                                  "Other than ppo writes RUN_DIR-ALGORITHM and reuses RUN_DIR's completions, rankings, "
                                  "pairs and reward model, so only the algorithm differs."),
    run_dir: str = typer.Option("runs/demo", help="Run directory of the demo (with --no-kl or --algorithm: of the run "
                                "it starts from)."),
    seed: Optional[int] = typer.Option(None, help="Seed of every stage (default: the demo's, 0)."),
    dtype: Optional[str] = typer.Option(None, help="Precision of every stage: float32, bfloat16 or auto (default: auto)."),
    force: bool = typer.Option(False, "--force", help="Run every stage again."),
) -> None:
    """The whole loop on the embedded default: SmolLM2-135M-Instruct, the shipped prompts, simulated
    labelers following the guideline, a MiniLM reward model, PPO with LoRA, evaluation and report."""
    from rlhfkit import defaults
    from rlhfkit.pipeline import ALGORITHMS, resolve_stage_configs, run_pipeline, seed_from

    if algorithm not in ALGORITHMS:
        _fail(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    if no_kl and algorithm == "dpo":
        _fail("--no-kl turns off the KL penalty of ppo, rloo and grpo; DPO's β is its KL (use `rlhfkit dpo --beta`)")
    shared = {k: v for k, v in (("seed", seed), ("dtype", dtype)) if v is not None}
    target = run_dir + ("" if algorithm == "ppo" else f"-{algorithm}") + ("-no-kl" if no_kl else "")
    overrides: dict = {"*": {"run_dir": target, "algorithm": algorithm, **shared}}
    if no_kl:
        overrides["ppo"] = {"kl_coef": 0.0, "kl_budget": 0.0}
        overrides["eval"] = {"kl_budget": 0.0}
    if target != run_dir:
        source = Path(run_dir)
        if source.exists() and not force and not Path(target).exists():
            copied = run_stage(seed_from, source, Path(target), resolve_stage_configs(defaults.demo_path(), overrides), "train_rm")
            if copied:
                what = "β" if algorithm == "ppo" else "the algorithm" + (" and β" if no_kl else "")
                typer.echo(f"reusing {', '.join(copied)} from {source} (same configs): the runs differ only in {what}")
    s = run_stage(run_pipeline, defaults.demo_path(), overrides=overrides, force=force, echo=typer.echo)
    typer.echo(f"demo finished in {s['seconds'] / 60:.1f} min; open {target}/eval/report.html")


cai_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(cai_app, name="cai", help="Constitutional AI: critique → revision (SL stage) and AI feedback (RLAIF).")


@stage_command("revise", CaiReviseConfig, section="cai_revise", target=cai_app)
def cai_revise(cfg: CaiReviseConfig) -> None:
    """Red-team prompts → response → critique → revision (n rounds) → RUN_DIR/cai/revisions.jsonl."""
    from rlhfkit.cai.revise import run_revise

    s = run_revise(cfg)
    typer.echo(
        f"revised {s['prompts']} responses ({s['rounds']} round(s); {s['changed']} changed, "
        f"{s['empty_revisions']} empty revisions) in {s['seconds']:.0f} s, {s['tokens_per_s']:.0f} new tokens/s → {s['path']}"
    )


@stage_command("label", CaiLabelConfig, section="cai_label", target=cai_app)
def cai_label(cfg: CaiLabelConfig) -> None:
    """An AI labeler ranks the completions by the constitution's comparison questions → RUN_DIR/feedback.db."""
    from rlhfkit.cai.ai_labeler import run_ai_label

    s = run_ai_label(cfg)
    p = s["progress"]
    typer.echo(
        f"{s['tasks_added']} tasks added ({s['tasks_existing']} already there); {s['rankings']} rankings by "
        f"{s['labeler']}; {p.rankings_done}/{p.rankings_needed} rankings done → {s['store']}"
    )


@stage_command("sft", SftConfig)
def sft(cfg: SftConfig) -> None:
    """Supervised fine-tuning (LoRA) on (prompt, revision) pairs → RUN_DIR/sft (adapter + merged model)."""
    from rlhfkit.train.sft import run_sft

    s = run_sft(cfg)
    if not on_rank0():
        return
    merged = f"; start PPO from it with --model {s['merged']}" if s["merged"] else ""
    typer.echo(
        f"sft on {s['examples']} examples ({s['dropped_failed']} failed the guideline, left out): "
        f"reply loss {s['loss_before']:.3f} → {s['loss_after']:.3f} in {s['seconds']:.0f} s → {s['path']}{merged}"
    )


@stage_command("serve", ServeConfig)
def serve(cfg: ServeConfig) -> None:
    """An OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models) over a run's aligned policy or a model."""
    from rlhfkit.serve.app import run_serve

    run_serve(cfg)


@stage_command("rag-index", RagIndexConfig)
def rag_index(cfg: RagIndexConfig) -> None:
    """Index a folder of text/Markdown files for `rlhfkit ask --method rag|react` (MiniLM + faiss)."""
    from rlhfkit.apps.ask import run_rag_index

    s = run_rag_index(cfg)
    typer.echo(f"indexed {s['files']} files as {s['chunks']} chunks → {s['index']}")


@stage_command("ask", AskConfig)
def ask(cfg: AskConfig) -> None:
    """Ask one question through an app: plain, chain-of-thought, PAL (sandboxed Python), RAG, or ReAct."""
    from rlhfkit.apps.ask import run_ask

    typer.echo(run_ask(cfg))


@stage_command("apps-eval", AppsEvalConfig)
def apps_eval(cfg: AppsEvalConfig) -> None:
    """Score a model and its reference on arithmetic (plain, CoT, PAL) and handbook questions (closed-book, RAG)."""
    from rlhfkit.apps.ask import run_apps_eval

    typer.echo(run_apps_eval(cfg))


def _help(config_cls: type, name: str) -> str:
    """A config field's one help text, for commands that take a positional argument."""
    return next(f.metadata["help"] for f in config_fields(config_cls) if f.name == name)


@app.command("export")
def export(
    run_dir: str = typer.Argument(..., help=_help(ExportConfig, "run_dir")),
    out: str = typer.Option(..., "--out", help=_help(ExportConfig, "out")),
    format: str = typer.Option("hf", "--format", help=_help(ExportConfig, "format")),
    gguf_type: str = typer.Option("f16", "--gguf-type", help=_help(ExportConfig, "gguf_type")),
    dtype: str = typer.Option("float32", "--dtype", help=_help(ExportConfig, "dtype")),
    quantize: str = typer.Option("none", "--quantize", help=_help(ExportConfig, "quantize")),
    sparsity: float = typer.Option(0.0, "--sparsity", help=_help(ExportConfig, "sparsity")),
    structured: bool = typer.Option(False, "--structured", help=_help(ExportConfig, "structured")),
    recover_steps: int = typer.Option(0, "--recover-steps", help=_help(ExportConfig, "recover_steps")),
    force: bool = typer.Option(False, "--force", help=_help(ExportConfig, "force")),
) -> None:
    """Ship the aligned policy (LoRA merged): a transformers folder or a GGUF file, optionally pruned or int8."""
    from rlhfkit.deploy.export import run_export

    values = dict(run_dir=run_dir, out=out, format=format, gguf_type=gguf_type, dtype=dtype, quantize=quantize,
                  sparsity=sparsity, structured=structured, recover_steps=recover_steps, force=force)
    cfg = run_stage(load_config, ExportConfig, None, values, section="export")
    s = run_stage(run_export, cfg)
    what = f"GGUF {s['gguf_type'].upper()}" if s["format"] == "gguf" else f"transformers folder ({s['dtype']}, quantize {s['quantize']})"
    pruned = f", {s['sparsity']:.0%} {'MLP channels' if s['structured'] else 'weights'} pruned" if s["sparsity"] else ""
    if s["recovery"]:
        r = s["recovery"]
        pruned += f", recovered in {r['steps']} steps (KL to the policy {r['before']['kl']:.3f} → {r['after']['kl']:.3f} per token)"
    typer.echo(f"exported {s['source']} as {what}{pruned}: {s['bytes'] / 1e6:.1f} MB in {s['seconds']:.0f} s → {s['path']}")


@stage_command("distil", DistilConfig)
def distil(cfg: DistilConfig) -> None:
    """Distil the aligned policy into a shallower student (every N-th block) on its own samples → a transformers folder."""
    from rlhfkit.deploy.distil import run_distil

    s = run_distil(cfg)
    typer.echo(f"distilled {s['teacher_layers']} → {s['layers']} blocks on {s['completions']} teacher completions, "
               f"{s['steps']} steps: KL to the teacher {s['before']['kl']:.3f} → {s['after']['kl']:.3f} per token "
               f"in {s['seconds']:.0f} s: {s['bytes'] / 1e6:.1f} MB → {s['path']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
