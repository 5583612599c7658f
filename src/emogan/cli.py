"""`emogan <stage>`: one sub-command per pipeline stage. Parses options and calls the stage."""

import json
import sys
from pathlib import Path

import click

from emogan.config import DEFAULT_PARAMS, Params, load_params
from emogan.errors import EmoganError

OutPath = click.Path(path_type=Path)


def _params(ctx: click.Context) -> Params:
    # Validated before a stage module is imported, so a bad key fails fast, before torch loads.
    return load_params(ctx.obj)


def _report(summary: object) -> None:
    click.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--params",
    type=OutPath,
    default=DEFAULT_PARAMS,
    show_default=True,
    help="The params file every stage reads (DVC's `-S` edits it).",
)
@click.pass_context
def cli(ctx: click.Context, params: Path) -> None:
    """emogan: photos of people -> emotion dataset -> StarGAN emotion translation.

    Each sub-command is one DVC stage; `dvc repro` runs them in order.
    """
    ctx.obj = params


@cli.command()
@click.option(
    "--out",
    type=OutPath,
    default=Path("data/demo"),
    show_default=True,
    help="Folder to (re)write the demo world into.",
)
@click.pass_context
def demo(ctx: click.Context, out: Path) -> None:
    """Draw the offline demo world: scene photos + manifest, a FER2013-format CSV, ground truth."""
    cfg = _params(ctx).demo
    from emogan.data.demo import make_demo

    _report(make_demo(cfg, out))


@cli.group(invoke_without_command=True)
@click.option(
    "--out",
    type=OutPath,
    default=Path("data/raw"),
    show_default=True,
    help="Folder for images/<emotion>/<sha256>.<ext> and the provenance manifest.csv.",
)
@click.option(
    "--metrics",
    type=OutPath,
    default=Path("metrics/collect.json"),
    show_default=True,
    help="Per-emotion counts and failures by reason.",
)
@click.pass_context
def collect(ctx: click.Context, out: Path, metrics: Path) -> None:
    """Fetch every image of collect.manifest (or collect.from_dir) into data/raw.

    Validates, dedupes and records provenance; re-running skips what is already stored.
    """
    if ctx.invoked_subcommand is not None:
        return
    cfg = _params(ctx).collect
    from emogan.data.collect import collect_images

    _report(collect_images(cfg, out, metrics))


@collect.command()
@click.pass_context
def search(ctx: click.Context) -> None:
    """Query the Openverse API for openly licensed photos of every collect.keywords entry.

    Writes collect.search.out, a manifest to review and commit, then use as collect.manifest.
    """
    cfg = _params(ctx).collect
    from emogan.data.openverse import search_openverse

    _report(search_openverse(cfg))


@cli.group()
def bench() -> None:
    """Measure speed and quality goals; results belong in BENCHMARKS.md."""


@bench.command("demo")
@click.option(
    "--work-dir",
    type=OutPath,
    default=Path("data/bench/demo"),
    show_default=True,
    help="Scratch folder for the generated world.",
)
@click.pass_context
def bench_demo(ctx: click.Context, work_dir: Path) -> None:
    """Time the demo world; MTCNN recall on its faces; a small CNN's accuracy on its FER CSV."""
    cfg = _params(ctx).demo
    from emogan.bench import bench_demo_world

    _report(bench_demo_world(cfg, work_dir))


def main() -> None:
    try:
        cli.main(prog_name="emogan")
    except EmoganError as error:
        click.echo(f"emogan: error: {error}", err=True)
        sys.exit(1)
