"""`emogan <stage>`: one sub-command per pipeline stage. Parses options and calls the stage."""

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from emogan.config import DEFAULT_PARAMS, Params, load_params, params_yaml
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError
from emogan.progress import print_stage_header

F = TypeVar("F", bound=Callable[..., Any])
OutPath = click.Path(path_type=Path)


def path_option(
    flag: str, help: str, *, default: str | None = None, required: bool = True
) -> Callable[[F], F]:
    """A file or folder option. A stage's paths have no default: dvc.yaml's `cmd` names every
    one, so they are spelled only there, beside the stage's deps and outs."""
    if default is None:
        return click.option(flag, type=OutPath, required=required, help=help)
    return click.option(flag, type=OutPath, default=Path(default), show_default=True, help=help)


def _require_paths(ctx: click.Context, **paths: Path | None) -> None:
    """For a stage that is also a group: its sub-commands (`collect search`) need no paths."""
    missing = [f"--{name.replace('_', '-')}" for name, path in paths.items() if path is None]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (dvc.yaml's cmd passes them)", ctx)


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


@cli.command("params")
@click.pass_context
def show_params(ctx: click.Context) -> None:
    """Print every key with the value the stages use: params.yaml's, else the default."""
    click.echo(params_yaml(_params(ctx)), nl=False)


@cli.command()
@path_option("--out", "Folder to (re)write the demo world into.")
@click.pass_context
def demo(ctx: click.Context, out: Path) -> None:
    """Draw the offline demo world: scene photos + manifest, a FER2013-format CSV, ground truth."""
    cfg = _params(ctx).demo
    from emogan.data.demo import make_demo

    _report(make_demo(cfg, out))


@cli.group(invoke_without_command=True)
@path_option(
    "--out",
    "Folder for images/<emotion>/<sha256>.<ext> and the provenance manifest.csv.",
    required=False,
)
@path_option("--metrics", "Per-emotion counts and failures by reason.", required=False)
@click.pass_context
def collect(ctx: click.Context, out: Path | None, metrics: Path | None) -> None:
    """Fetch every image of collect.manifest (or collect.from_dir) into data/raw.

    Validates, dedupes and records provenance; re-running skips what is already stored.
    """
    if ctx.invoked_subcommand is not None:
        return
    _require_paths(ctx, out=out, metrics=metrics)
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
@path_option("--raw", "The collect stage's output folder.")
@path_option("--out", "Folder for images/<crop_id>.png and crops.csv.")
@path_option("--metrics", "Images, faces, faces per image, rejections by reason.")
@click.pass_context
def crop(ctx: click.Context, raw: Path, out: Path, metrics: Path) -> None:
    """Crop every face MTCNN finds (crop.min_prob, crop.min_size) as a square with crop.margin."""
    cfg = _params(ctx).crop
    print_stage_header("crop", metrics)
    from emogan.data.crop import crop_faces

    _report(crop_faces(cfg, raw, out, metrics))


@cli.command("crop-judge")
@path_option("--crops", "The crop stage's output folder.")
@path_option("--out", "The scores CSV: per crop the judge's probability of each emotion.")
@path_option("--metrics", "The judge's FER2013 test accuracy, crops scored, timing.")
@click.pass_context
def crop_judge(ctx: click.Context, crops: Path, out: Path, metrics: Path) -> None:
    """Score every crop with a classifier trained on FER2013 alone (fer2013, crop_judge).

    The review tool's suspect order puts first the crops whose folder emotion it finds least
    likely: the likeliest mislabels.
    """
    params = _params(ctx)
    print_stage_header("crop_judge", metrics)
    from emogan.crop_judge import judge_crops

    _report(judge_crops(params, crops, out, metrics))


@cli.command("simulate-review")
@path_option("--demo", "The demo world, whose ground_truth.csv decides.")
@path_option("--raw", "The collect stage's output folder.")
@path_option("--crops", "The crop stage's output folder.")
@path_option("--out", "The decisions CSV to write (the demo's review.decisions).")
@path_option("--metrics", "Decisions per action and the crop stage's face recall.")
def simulate_review(demo: Path, raw: Path, crops: Path, out: Path, metrics: Path) -> None:
    """Decide every crop of a demo photo as a careful human would, from the demo's ground truth.

    Drops crops without a drawn face, relabels background faces. --out is its own file, never
    review.decisions itself, so that a human's decisions are never overwritten.
    """
    from emogan.data.simulated_review import simulate_review as simulate

    _report(simulate(demo, raw, crops, out, metrics))


@cli.group(invoke_without_command=True)
@path_option("--crops", "The crop stage's output folder.", required=False)
@path_option("--out", "Folder for <emotion>/<crop_id>.png and reviewed.csv.", required=False)
@path_option("--metrics", "Kept, dropped, relabelled, unreviewed and stale counts.", required=False)
@click.pass_context
def review(ctx: click.Context, crops: Path | None, out: Path | None, metrics: Path | None) -> None:
    """Apply review.decisions to the crops: drop, relabel, keep; review.unreviewed for the rest.

    `emogan review serve` opens the web tool that writes the decisions.
    """
    if ctx.invoked_subcommand is not None:
        return
    _require_paths(ctx, crops=crops, out=out, metrics=metrics)
    cfg = _params(ctx).review
    from emogan.data.review import apply_review

    _report(apply_review(cfg, crops, out, metrics))


@review.command()
@path_option("--crops", "The crop stage's output folder.", default="data/interim/crops")
@path_option(
    "--raw",
    "The collect stage's output folder (source photos shown for context).",
    default="data/raw",
)
@path_option(
    "--scores",
    "The crop_judge stage's scores, for the suspect order (confidence order without them).",
    default="data/interim/crop_scores.csv",
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
    scores: Path,
    host: str,
    port: int,
    no_browser: bool,
    reviewer: str | None,
) -> None:
    """Review crops in the browser; every key press is saved to review.decisions at once.

    With --scores, each folder shows first the crops the crop judge doubts (the suspect order),
    each with the judge's guess, which `a` accepts.
    """
    cfg = _params(ctx).review
    from emogan.review_app.server import serve_review

    serve_review(
        cfg,
        crops,
        raw,
        host=host,
        port=port,
        open_browser=not no_browser,
        reviewer=reviewer,
        scores_path=scores,
    )


@cli.command()
@path_option("--reviewed", "The review stage's output folder.")
@path_option("--out", "Folder for train/ and test/ per emotion and index.csv.")
@path_option("--metrics", "Class counts per split and source.")
@click.pass_context
def merge(ctx: click.Context, reviewed: Path, out: Path, metrics: Path) -> None:
    """Merge FER2013 (fer2013.path) with the reviewed crops at image_size, train/ and test/."""
    params = _params(ctx)
    from emogan.data.merge import merge_dataset

    _report(merge_dataset(params.fer2013, params.merge, params.image_size, reviewed, out, metrics))


@cli.command()
@path_option("--data", "The merge stage's output folder (train/ and test/ per emotion, index.csv).")
@path_option("--out", "Folder for generator.pt, discriminator.pt, config.json and run.json.")
@click.option(
    "--checkpoints",
    type=OutPath,
    default=Path("models/checkpoints"),
    show_default=True,
    # A remote runner points this at a disk that outlives the job and the temporary
    # workspaces of `dvc exp run --queue`, so a preempted run resumes there.
    envvar="EMOGAN_CHECKPOINTS",
    show_envvar=True,
    help="Resumable checkpoints, one sub-folder per configuration; a relative path is taken from"
    " the project root ($DVC_ROOT), so queued experiments share them. $EMOGAN_CHECKPOINTS, when"
    " set, replaces the default (use an absolute path that survives the job).",
)
@path_option("--metrics", "Final losses, iterations and speed.")
@path_option("--loss-log", "Average losses at every train.log_step, for `dvc plots show`.")
@click.pass_context
def train(
    ctx: click.Context, data: Path, out: Path, checkpoints: Path, metrics: Path, loss_log: Path
) -> None:
    """Train the StarGAN (model, train), tracked in MLflow (mlflow).

    Resumes this configuration's checkpoint when there is one; SIGTERM stops after writing one.
    """
    params = _params(ctx)
    print_stage_header("train", metrics)
    from emogan.stargan.train import train_stargan

    _report(train_stargan(params, data, out, checkpoints, metrics, loss_log))


@cli.command()
@path_option("--model", "The train stage's output folder.")
@path_option("--data", "The merge stage's output folder; its test faces are translated.")
@path_option("--out", "Folder for all.png and one <emotion>.png per source emotion.")
@click.pass_context
def samples(ctx: click.Context, model: Path, data: Path, out: Path) -> None:
    """Draw translation grids: each row a test face and its translation into all 7 emotions.

    Logs them to the training's MLflow run under samples/final/.
    """
    params = _params(ctx)
    from emogan.stargan.sample import make_samples

    _report(make_samples(params, model, data, out))


@cli.command()
@path_option("--data", "The merge stage's output folder.")
@path_option("--out", "Folder for classifier.pt and config.json.")
@path_option(
    "--metrics", "Test accuracy, recall per emotion, validation accuracy, epochs and training time."
)
@path_option("--confusion", "One actual,predicted row per test image, for `dvc plots show`.")
@click.pass_context
def classifier(ctx: click.Context, data: Path, out: Path, metrics: Path, confusion: Path) -> None:
    """Train the emotion classifier (classifier), the evaluation's judge, on the train split.

    The epoch is picked on a held-out share of train; the test split is only scored.
    Tracked in its own MLflow run (mlflow).
    """
    params = _params(ctx)
    print_stage_header("classifier", metrics)
    from emogan.classifier import train_classifier

    _report(train_classifier(params, data, out, metrics, confusion))


@cli.command()
@path_option("--model", "The train stage's output folder.")
@path_option("--classifier", "The classifier stage's output folder.")
@path_option("--data", "The merge stage's output folder; its test faces are translated.")
@path_option(
    "--metrics",
    "Per scope (overall, fer2013, custom): the judge on real faces, target accuracy, keep, "
    "cycle and identity L1, distinctness, FID, warning flags.",
)
@path_option(
    "--summary",
    "The headline of --metrics, the file `dvc exp show` lists: per source the target accuracy"
    " and the judge's accuracy on real faces; keep L1, FID, faces, warnings.",
)
@path_option("--confusion", "One target,predicted row per translation, for `dvc plots show`.")
@click.pass_context
def evaluate(
    ctx: click.Context,
    model: Path,
    classifier: Path,
    data: Path,
    metrics: Path,
    summary: Path,
    confusion: Path,
) -> None:
    """Translate every test face into every emotion and score it with the classifier (evaluate).

    The metrics are also logged to the training's MLflow run as eval/...; warnings (a fooled
    judge, collapsed or copied translations) end the output, one line each.
    """
    params = _params(ctx)
    print_stage_header("evaluate", metrics)
    from emogan.evaluate import evaluate_translations, warning_lines

    scores = evaluate_translations(params, model, classifier, data, metrics, summary, confusion)
    _report(scores)
    for line in warning_lines(scores).values():
        click.echo(f"emogan: evaluate: warning: {line}", err=True)


@cli.command()
@click.argument("photos", nargs=-1, required=True, type=OutPath)
@click.option(
    "--model",
    default="models/stargan",
    show_default=True,
    help="The train stage's output folder, or an MLflow model URI such as"
    " models:/emogan-stargan/1 or runs:/<run_id>/generator (looked up in mlflow.tracking_uri).",
)
@click.option(
    "--emotion",
    type=click.Choice(["all", *EMOTIONS]),
    default="all",
    show_default=True,
    help="The emotion to translate every face into, or all seven.",
)
@path_option(
    "--out",
    "Folder for <photo>_face<N>.png (a grid per face) and the --paste photos.",
    default="translations",
)
@click.option(
    "--paste",
    is_flag=True,
    help="Also write <photo>_<emotion>.jpg|png: the photo with every face translated.",
)
@click.option(
    "--min-prob",
    type=click.FloatRange(0, 1),
    default=None,
    help="Smallest MTCNN probability of a face  [default: crop.min_prob]",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.",
)
@click.pass_context
def translate(
    ctx: click.Context,
    photos: tuple[Path, ...],
    model: str,
    emotion: str,
    out: Path,
    paste: bool,
    min_prob: float | None,
    device: str,
) -> None:
    """Translate every face MTCNN finds in PHOTOS into one emotion or all seven.

    Faces are cropped as the crop stage does (crop.min_size, crop.margin). A photo that cannot
    be read or shows no face is reported and skipped; the command then exits non-zero.
    """
    params = _params(ctx)
    from emogan.translate import translate_photos

    _report(translate_photos(params, photos, model, emotion, out, paste, min_prob, device))


@cli.group()
def bench() -> None:
    """Measure speed and quality goals; results belong in BENCHMARKS.md."""


@bench.command("demo")
@path_option("--work-dir", "Scratch folder for the generated world.", default="data/bench/demo")
@click.pass_context
def bench_demo(ctx: click.Context, work_dir: Path) -> None:
    """Time the demo world; MTCNN recall on its faces; a small CNN's accuracy on its FER CSV."""
    cfg = _params(ctx).demo
    from emogan.bench.demo_world import bench_demo_world

    _report(bench_demo_world(cfg, work_dir))


@bench.command("merge")
@path_option(
    "--work-dir",
    "Scratch folder for the generated CSV and the merged output.",
    default="data/bench/merge",
)
@click.option(
    "--rows",
    type=click.IntRange(min=1),
    default=35_887,
    show_default=True,
    help="Rows of the generated FER2013-format CSV (the real one has 35,887).",
)
def bench_merge(work_dir: Path, rows: int) -> None:
    """Time the merge stage on a full-size FER2013-format CSV and its FER+ votes."""
    from emogan.bench.merge import bench_merge as run_bench

    _report(run_bench(work_dir, rows))


@bench.command("duplicates")
@path_option("--demo", "The demo world, with planted_duplicates.csv.", default="data/demo")
@path_option("--raw", "The collect stage's output folder.", default="data/raw")
@path_option("--crops", "The crop stage's output folder.", default="data/interim/crops")
@path_option("--processed", "The merge stage's output folder.", default="data/processed")
def bench_duplicates(demo: Path, raw: Path, crops: Path, processed: Path) -> None:
    """Recall and precision of the merge's near-duplicate groups against the planted ones."""
    from emogan.bench.duplicates import bench_duplicates as run_bench

    _report(run_bench(demo, raw, crops, processed))


@bench.command("learning")
@path_option("--data", "The merge stage's output folder.", default="data/processed")
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


@bench.command("review-queue")
@path_option("--crops", "The crop stage's output folder.", default="data/interim/crops")
@path_option("--scores", "The crop_judge stage's scores.", default="data/interim/crop_scores.csv")
@path_option(
    "--decisions",
    "Decisions whose relabels are the mislabels  [default: review.decisions, the demo's"
    " simulated reviewer's]",
    required=False,
)
@click.pass_context
def bench_review_queue(
    ctx: click.Context, crops: Path, scores: Path, decisions: Path | None
) -> None:
    """The share of the relabelled crops within the first 20% of each folder, in the review
    tool's suspect order and in its confidence order."""
    decisions = decisions or _params(ctx).review.decisions
    from emogan.bench.review_queue import bench_review_queue as run_bench

    _report(run_bench(crops, scores, decisions))


@bench.command("template")
@click.option(
    "--per-emotion",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Training faces measured per emotion.",
)
@click.pass_context
def bench_template(ctx: click.Context, per_emotion: int) -> None:
    """Where MTCNN finds the landmarks on fer2013.path's faces: the values for crop.template."""
    cfg = _params(ctx).fer2013
    from emogan.bench.template import bench_template as run_bench

    _report(run_bench(cfg, per_emotion))


@bench.command("train")
@path_option("--data", "The merge stage's output folder.", default="data/processed")
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Timed iterations.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Untimed iterations first.",
)
@click.option(
    "--compare-eager",
    is_flag=True,
    help="Also time the official code's eager loop on the same config and device; print both"
    " and the speed-up.",
)
@click.option(
    "--profile",
    is_flag=True,
    help="Then profile the fast path: how busy the device is and the operators that take its time.",
)
@click.pass_context
def bench_train(
    ctx: click.Context,
    data: Path,
    iterations: int,
    warmup: int,
    compare_eager: bool,
    profile: bool,
) -> None:
    """Milliseconds per iteration of params.yaml's StarGAN on train.device, and the projected
    time of the thesis's 200,000 iterations."""
    params = _params(ctx)
    from emogan.bench.train import bench_train as run_bench

    _report(run_bench(params, data, iterations, warmup, compare_eager, profile))


def main() -> None:
    try:
        cli.main(prog_name="emogan")
    except EmoganError as error:
        click.echo(f"emogan: error: {error}", err=True)
        sys.exit(1)
