"""`emogan <stage>`: one sub-command per pipeline stage. Parses options and calls the stage."""

import dataclasses
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
    if dataclasses.is_dataclass(summary) and not isinstance(summary, type):
        summary = dataclasses.asdict(summary)
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


@cli.command()
@click.option(
    "--raw",
    type=OutPath,
    default=Path("data/raw"),
    show_default=True,
    help="The collect stage's output folder.",
)
@click.option(
    "--out",
    type=OutPath,
    default=Path("data/interim/crops"),
    show_default=True,
    help="Folder for images/<crop_id>.png and crops.csv.",
)
@click.option(
    "--metrics",
    type=OutPath,
    default=Path("metrics/crop.json"),
    show_default=True,
    help="Images, faces, faces per image, rejections by reason.",
)
@click.pass_context
def crop(ctx: click.Context, raw: Path, out: Path, metrics: Path) -> None:
    """Crop every face MTCNN finds (crop.min_prob, crop.min_size) as a square with crop.margin."""
    cfg = _params(ctx).crop
    from emogan.data.crop import crop_faces

    _report(crop_faces(cfg, raw, out, metrics))


@cli.command("simulate-review")
@click.option(
    "--demo",
    type=OutPath,
    default=Path("data/demo"),
    show_default=True,
    help="The demo world, whose ground_truth.csv decides.",
)
@click.option(
    "--raw",
    type=OutPath,
    default=Path("data/raw"),
    show_default=True,
    help="The collect stage's output folder.",
)
@click.option(
    "--crops",
    type=OutPath,
    default=Path("data/interim/crops"),
    show_default=True,
    help="The crop stage's output folder.",
)
@click.option(
    "--metrics",
    type=OutPath,
    default=Path("metrics/simulated_review.json"),
    show_default=True,
    help="Decisions per action and the crop stage's face recall.",
)
@click.pass_context
def simulate_review(ctx: click.Context, demo: Path, raw: Path, crops: Path, metrics: Path) -> None:
    """Decide every crop of a demo photo as a careful human would, from the demo's ground truth.

    Writes review.decisions: drops crops without a drawn face, relabels background faces.
    """
    cfg = _params(ctx).review
    from emogan.data.simulated_review import simulate_review as simulate

    _report(simulate(demo, raw, crops, cfg.decisions, metrics))


@cli.group(invoke_without_command=True)
@click.option(
    "--crops",
    type=OutPath,
    default=Path("data/interim/crops"),
    show_default=True,
    help="The crop stage's output folder.",
)
@click.option(
    "--out",
    type=OutPath,
    default=Path("data/interim/reviewed"),
    show_default=True,
    help="Folder for <emotion>/<crop_id>.png and reviewed.csv.",
)
@click.option(
    "--metrics",
    type=OutPath,
    default=Path("metrics/review.json"),
    show_default=True,
    help="Kept, dropped, relabelled, unreviewed and stale counts.",
)
@click.pass_context
def review(ctx: click.Context, crops: Path, out: Path, metrics: Path) -> None:
    """Apply review.decisions to the crops: drop, relabel, keep; review.unreviewed for the rest.

    `emogan review serve` opens the web tool that writes the decisions.
    """
    if ctx.invoked_subcommand is not None:
        return
    cfg = _params(ctx).review
    from emogan.data.review import apply_review

    _report(apply_review(cfg, crops, out, metrics))


@review.command()
@click.option(
    "--crops",
    type=OutPath,
    default=Path("data/interim/crops"),
    show_default=True,
    help="The crop stage's output folder.",
)
@click.option(
    "--raw",
    type=OutPath,
    default=Path("data/raw"),
    show_default=True,
    help="The collect stage's output folder (source photos shown for context).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; the default keeps the tool on this machine.",
)
@click.option("--port", type=int, default=8765, show_default=True, help="0 picks a free port.")
@click.option("--no-browser", is_flag=True, help="Do not open a browser tab.")
@click.option("--reviewer", default=None, help="Name recorded with each decision [default: $USER].")
@click.pass_context
def serve(
    ctx: click.Context,
    crops: Path,
    raw: Path,
    host: str,
    port: int,
    no_browser: bool,
    reviewer: str | None,
) -> None:
    """Review crops in the browser; every key press is saved to review.decisions at once."""
    cfg = _params(ctx).review
    from emogan.review_app.server import serve_review

    serve_review(
        cfg, crops, raw, host=host, port=port, open_browser=not no_browser, reviewer=reviewer
    )


@cli.command()
@click.option(
    "--reviewed",
    type=OutPath,
    default=Path("data/interim/reviewed"),
    show_default=True,
    help="The review stage's output folder.",
)
@click.option(
    "--out",
    type=OutPath,
    default=Path("data/processed"),
    show_default=True,
    help="Folder for train/ and test/ per emotion and index.csv.",
)
@click.option(
    "--metrics",
    type=OutPath,
    default=Path("metrics/dataset.json"),
    show_default=True,
    help="Class counts per split and source.",
)
@click.pass_context
def merge(ctx: click.Context, reviewed: Path, out: Path, metrics: Path) -> None:
    """Merge FER2013 (fer2013.path) with the reviewed crops at image_size, train/ and test/."""
    params = _params(ctx)
    from emogan.data.merge import merge_dataset

    _report(merge_dataset(params.fer2013, params.merge, params.image_size, reviewed, out, metrics))


@cli.command()
@click.option(
    "--data",
    type=OutPath,
    default=Path("data/processed"),
    show_default=True,
    help="The merge stage's output folder (train/ and test/ per emotion, index.csv).",
)
@click.option(
    "--out",
    type=OutPath,
    default=Path("models/stargan"),
    show_default=True,
    help="Folder for generator.pt, discriminator.pt, config.json and run.json.",
)
@click.option(
    "--checkpoints",
    type=OutPath,
    default=Path("models/checkpoints"),
    show_default=True,
    help="Resumable checkpoints, one sub-folder per configuration; a relative path is taken "
    "from the project root ($DVC_ROOT), so queued experiments share them.",
)
@click.option(
    "--metrics",
    type=OutPath,
    default=Path("metrics/train.json"),
    show_default=True,
    help="Final losses, iterations and speed.",
)
@click.option(
    "--loss-log",
    type=OutPath,
    default=Path("metrics/train_loss.csv"),
    show_default=True,
    help="Average losses at every train.log_step, for `dvc plots show`.",
)
@click.pass_context
def train(
    ctx: click.Context, data: Path, out: Path, checkpoints: Path, metrics: Path, loss_log: Path
) -> None:
    """Train the StarGAN (model, train), tracked in MLflow (mlflow).

    Resumes this configuration's checkpoint when there is one; SIGTERM stops after writing one.
    """
    params = _params(ctx)
    from emogan.stargan.train import train_stargan

    _report(train_stargan(params, data, out, checkpoints, metrics, loss_log))


@cli.command()
@click.option(
    "--model",
    type=OutPath,
    default=Path("models/stargan"),
    show_default=True,
    help="The train stage's output folder.",
)
@click.option(
    "--data",
    type=OutPath,
    default=Path("data/processed"),
    show_default=True,
    help="The merge stage's output folder; its test faces are translated.",
)
@click.option(
    "--out",
    type=OutPath,
    default=Path("metrics/samples"),
    show_default=True,
    help="Folder for all.png and one <emotion>.png per source emotion.",
)
@click.pass_context
def samples(ctx: click.Context, model: Path, data: Path, out: Path) -> None:
    """Draw translation grids: each row a test face and its translation into all 7 emotions.

    Logs them to the training's MLflow run under samples/final/.
    """
    params = _params(ctx)
    from emogan.stargan.sample import make_samples

    _report(make_samples(params, model, data, out))


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
    from emogan.bench.demo_world import bench_demo_world

    _report(bench_demo_world(cfg, work_dir))


@bench.command("merge")
@click.option(
    "--work-dir",
    type=OutPath,
    default=Path("data/bench/merge"),
    show_default=True,
    help="Scratch folder for the generated CSV and the merged output.",
)
@click.option(
    "--rows",
    type=click.IntRange(min=1),
    default=35_887,
    show_default=True,
    help="Rows of the generated FER2013-format CSV (the real one has 35,887).",
)
def bench_merge(work_dir: Path, rows: int) -> None:
    """Time the merge stage on a full-size FER2013-format CSV."""
    from emogan.bench.merge import bench_merge as run_bench

    _report(run_bench(work_dir, rows))


@bench.command("learning")
@click.option(
    "--data",
    type=OutPath,
    default=Path("data/processed"),
    show_default=True,
    help="The merge stage's output folder.",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Iterations to train (train.num_iters_decay is scaled to match).",
)
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Score the generator every this many iterations.",
)
@click.option(
    "--grids", type=OutPath, default=None, help="Folder for a translation grid at every score."
)
@click.pass_context
def bench_learning(
    ctx: click.Context, data: Path, iterations: int, every: int, grids: Path | None
) -> None:
    """Learning curve of params.yaml's StarGAN: an independent judge's target accuracy of the
    translations, and how much of each face they keep."""
    params = _params(ctx)
    from emogan.bench.learning import bench_learning as run_bench

    _report(run_bench(params, data, iterations, every, grids))


def main() -> None:
    try:
        cli.main(prog_name="emogan")
    except EmoganError as error:
        click.echo(f"emogan: error: {error}", err=True)
        sys.exit(1)
