"""dvc.yaml is the stage contract: every module a stage's command imports is one of its deps,
and every path its command names is declared, so `dvc repro` never reports stale outputs as
up to date and a path is spelled in one place."""

import ast
import inspect
import shlex
import textwrap
from pathlib import Path

import click
import yaml

from emogan.cli import cli

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(tree: ast.AST, package: str) -> set[str]:
    """Project modules an AST imports, at any depth (a lazy import inside a function counts)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from emogan import atomic` imports the module emogan.atomic
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] == package and _module_file(name)}


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


def command_modules(argv: list[str]) -> set[Path]:
    """Files of every project module that `emogan <stage> ...` can import: cli.py's own imports,
    the stage command's, and theirs, transitively."""
    command: click.Command = cli
    for word in argv[1:]:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
    body = ast.parse(textwrap.dedent(inspect.getsource(command.callback)))
    cli_module = ast.parse((SRC / "emogan" / "cli.py").read_text())
    top_level = ast.Module(body=[n for n in cli_module.body if not isinstance(n, ast.FunctionDef)])
    todo = {"emogan.cli"} | _imported(top_level, "emogan") | _imported(body, "emogan")
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        for module in _with_parents(name) - seen:
            seen.add(module)
            if module != "emogan.cli":
                todo |= _imported(ast.parse(_module_file(module).read_text()), "emogan") - seen
    return {_module_file(name) for name in seen}


def _declared(stage: dict) -> set[Path]:
    paths = set()
    for kind in ("deps", "outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            paths.add((ROOT / path).resolve())
    return paths


def _covered(path: Path, declared: set[Path]) -> bool:
    return any(path == dep or dep in path.parents for dep in declared)


def contract_errors(dvc_yaml: str) -> list[str]:
    """One line per stage module or command path that dvc.yaml does not declare."""
    errors = []
    for name, stage in yaml.safe_load(dvc_yaml)["stages"].items():
        argv = shlex.split(stage["cmd"])
        deps = {(ROOT / dep).resolve() for dep in stage.get("deps", []) if "${" not in dep}
        for module in sorted(command_modules(argv)):
            if not _covered(module, deps):
                errors.append(f"{name}: imports {module.relative_to(SRC)}, not in its deps")
        declared = _declared(stage)
        for flag, value in zip(argv, argv[1:], strict=False):
            if flag.startswith("--") and not _covered((ROOT / value).resolve(), declared):
                errors.append(f"{name}: {flag} {value} is not a declared dep or out")
    return errors


def test_every_stage_declares_the_code_and_paths_its_command_uses():
    assert contract_errors((ROOT / "dvc.yaml").read_text()) == []


def test_a_stage_that_lists_only_its_own_module_is_caught():
    # The shape of dvc.yaml before the package became every stage's code dependency: crop read
    # images through data/images.py without listing it, so a change there reran nothing.
    old = """
stages:
  crop:
    cmd: emogan crop --raw data/raw --out data/interim/crops --metrics metrics/crop.json
    deps: [src/emogan/data/crop.py, src/emogan/data/detect.py, data/raw]
    outs: [data/interim/crops]
"""
    errors = contract_errors(old)
    assert "crop: imports emogan/data/images.py, not in its deps" in errors
    assert "crop: imports emogan/config.py, not in its deps" in errors
    assert "crop: --metrics metrics/crop.json is not a declared dep or out" in errors
    assert not any("crop.py" in line or "detect.py" in line for line in errors)
