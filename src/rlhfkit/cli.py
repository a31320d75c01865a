"""The ``rlhfkit`` command: one sub-command per pipeline stage.

Thin by design: parse, build the stage's config (defaults ← --config YAML ← options), call the
stage function, print a summary. Heavy libraries are imported inside the stage functions, so
``rlhfkit --help`` is instant.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from rlhfkit.config import GenerateConfig, field_types, load_config
from rlhfkit.data.errors import RlhfkitError

app = typer.Typer(
    help="rlhfkit: the whole RLHF loop: generate → label → pairs → train-rm → ppo → eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    """rlhfkit: the whole RLHF loop: generate → label → pairs → train-rm → ppo → eval."""
    if version:
        from rlhfkit import __version__

        typer.echo(__version__)
        raise typer.Exit()


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def run_stage(fn: Callable, *args, **kwargs):
    """Call a stage; a user-fixable error becomes one line on stderr and exit code 2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub unless the user asks for one
    try:
        return fn(*args, **kwargs)
    except RlhfkitError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted: finished artifacts are kept; re-run to continue", err=True)
        raise typer.Exit(code=130)


def stage_command(name: str, config_cls: type, section: str | None = None):
    """Register ``fn(cfg)`` as ``rlhfkit NAME`` with one option per config field (help from the field)."""

    def decorator(fn: Callable) -> Callable:
        types = field_types(config_cls)
        params = [
            inspect.Parameter(
                "config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                default=typer.Option(None, "--config", "-c", help="YAML file with these fields (or a pipeline YAML)."),
            )
        ]
        for f in dataclasses.fields(config_cls):
            flag = "--" + f.name.replace("_", "-")
            decls = [f"{flag}/--no-{flag[2:]}"] if types[f.name] is bool else [flag]
            params.append(inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[types[f.name]],
                default=typer.Option(None, *decls, help=f"{f.metadata['help']} [default: {f.default}]", show_default=False),
            ))

        def command(**kwargs):
            config_path = kwargs.pop("config")
            overrides = {k: v for k, v in kwargs.items() if v is not None}
            cfg = run_stage(load_config, config_cls, config_path, overrides, section=section or name)
            run_stage(fn, cfg)

        command.__signature__ = inspect.Signature(params)
        command.__name__ = fn.__name__
        command.__doc__ = fn.__doc__
        app.command(name)(command)
        return fn

    return decorator


@stage_command("generate", GenerateConfig)
def generate(cfg: GenerateConfig) -> None:
    """Sample K completions per prompt with the policy → RUN_DIR/completions.jsonl."""
    from rlhfkit.generate import run_generate

    s = run_generate(cfg)
    typer.echo(
        f"generated {s['completions']} completions for {s['prompts']} prompts "
        f"({s['ended']} ended with EOS) in {s['seconds']:.1f} s, {s['tokens_per_s']:.0f} new tokens/s → {s['path']}"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
