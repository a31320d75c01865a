"""Imports run one way — cli → pipeline → stages → models / losses → data — with no cycles (read from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rlhfkit"


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """The rlhfkit modules ``path`` imports (all of them, or only those imported when it is imported)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rlhfkit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlhfkit"):
            names = modules()
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module for a in node.names}
    return found


def test_no_import_cycles_at_module_level():
    mods = modules()
    graph = {m: {i for i in imports(p, top_level_only=True) if i in mods and i != m} for m, p in mods.items()}
    seen, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " → ".join(stack[stack.index(m):] + [m]))
        if m in seen:
            return
        stack.append(m)
        for n in graph[m]:
            visit(n)
        stack.pop()
        seen.add(m)

    for m in graph:
        visit(m)


def test_layers_import_downwards_only():
    mods = modules()
    stages = ("rlhfkit.generate", "rlhfkit.feedback.label", "rlhfkit.train.ppo", "rlhfkit.train.reward",
              "rlhfkit.train.reward_stage", "rlhfkit.train.sft", "rlhfkit.eval.run", "rlhfkit.cai.revise",
              "rlhfkit.cai.ai_labeler")
    for name, path in mods.items():
        used = imports(path)
        if name.startswith("rlhfkit.data"):
            assert all(u.startswith("rlhfkit.data") for u in used), (name, used)
        if name.startswith("rlhfkit.models"):
            allowed = ("rlhfkit.data", "rlhfkit.models", "rlhfkit.config", "rlhfkit.defaults")
            assert all(u.startswith(allowed) for u in used), (name, used)
        if name in ("rlhfkit.train.losses", "rlhfkit.train.kl_control", "rlhfkit.metric_names", "rlhfkit.eval.fmt"):
            assert not used, (name, used)
        if name.startswith("rlhfkit.eval"):
            assert not any(u.startswith(("rlhfkit.train.ppo", "rlhfkit.train.reward", "rlhfkit.train.sft")) for u in used), (name, used)
        if name not in ("rlhfkit.cli", "rlhfkit.__main__"):
            assert "rlhfkit.cli" not in used, name
        if name not in ("rlhfkit.cli", "rlhfkit.pipeline"):
            assert "rlhfkit.pipeline" not in used, name
        if name.startswith(("rlhfkit.models", "rlhfkit.data", "rlhfkit.train.losses")):
            assert not any(u in stages for u in used), (name, used)


def test_the_cli_module_imports_no_heavy_library_when_imported():
    tree = ast.parse((SRC / "cli.py").read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not top & {"torch", "transformers", "peft", "numpy", "sqlalchemy", "fastapi"}, top
