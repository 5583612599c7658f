"""The true path: `dvc repro` and `dvc exp run` in a fresh git clone of this project."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from emogan.data.merge import SPLITS
from emogan.tracking import flatten_params

ROOT = Path(__file__).resolve().parents[1]
SMALL_DEMO = {
    "photos_per_emotion": 2,
    "faceless_photos": 2,
    "fer_train_per_emotion": 12,
    "fer_test_per_emotion": 4,
    "planted_duplicates": 8,  # 8 FER rows, 2 web photos of FER faces, 2 scene photos relisted
}
# Seconds of training, not minutes: the point is the pipeline, not the faces.
SMALL_TRAIN = {
    "num_iters": 4,
    "num_iters_decay": 2,
    "batch_size": 4,
    "log_step": 2,
    "sample_step": 2,
    "checkpoint_step": 2,
}
SMALL_LAYERS = 2
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "emogan tests",
    "GIT_AUTHOR_EMAIL": "tests@emogan.invalid",
    "GIT_COMMITTER_NAME": "emogan tests",
    "GIT_COMMITTER_EMAIL": "tests@emogan.invalid",
}


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **GIT_IDENTITY}
    env.pop("MLFLOW_TRACKING_URI", None)  # the stages' default store: <project>/mlflow.db
    # The stages call `emogan`, which lives beside this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of the working tree (tracked and untracked, not ignored) with a small demo."""
    dest = tmp_path_factory.mktemp("project")
    listed = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["demo"].update(SMALL_DEMO)
    params["layers"] = SMALL_LAYERS
    params["model"].update(g_conv_dim=4, d_conv_dim=4)
    params["train"].update(SMALL_TRAIN)
    params["sample"]["rows"] = 2
    params["classifier"]["epochs"] = 2
    params["crop_judge"]["epochs"] = 2
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], dest)
    _run(["git", "add", "-A"], dest)
    _run(["git", "commit", "-qm", "clone"], dest)
    return dest


def data_dependencies(project: Path) -> set[str]:
    """The deps of dvc.yaml's stages, ${...} resolved: `dvc exp show` shows each one's hash."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    resolved = set()
    for stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values():
        for dep in stage.get("deps", []):
            if dep.startswith("${"):
                section, key = dep.strip("${}").split(".")
                dep = params[section][key]
            resolved.add(dep)
    return resolved


def test_dvc_exp_show_fits_about_one_terminal_width() -> None:
    # The demo's own table: Experiment, Created, params.yaml's keys, summary.json's, the deps.
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    summary = json.loads((ROOT / "metrics/summary.json").read_text())
    named = len(flatten_params(params)) + len(flatten_params(summary))
    # 37: fer2013.ferplus is both a params.yaml key and a dep of the merge stage.
    assert 2 + named + len(data_dependencies(ROOT)) <= 37


def _metrics(project: Path, name: str) -> dict:
    return json.loads((project / "metrics" / f"{name}.json").read_text())


def _tree_state(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_repro_builds_the_pipeline_and_a_second_repro_does_nothing(project: Path) -> None:
    _run(["dvc", "repro"], project)

    manifest = (project / "data/demo/manifest.csv").read_text().splitlines()
    photos = len(manifest) - 1
    planted_photos = 2 * (SMALL_DEMO["planted_duplicates"] // 4)
    assert photos == 7 * SMALL_DEMO["photos_per_emotion"] + SMALL_DEMO["faceless_photos"] + (
        planted_photos
    )
    collected = _metrics(project, "collect")
    assert collected["ok"] == photos == len(list((project / "data/raw/images").rglob("*.*")))
    cropped = _metrics(project, "crop")
    simulated = _metrics(project, "simulated_review")
    assert simulated["faces_found"] == cropped["faces"] - simulated["drop"] > 0
    reviewed = _metrics(project, "review")
    assert reviewed["relabelled"] == simulated["relabel"]
    assert reviewed["kept"] + reviewed["relabelled"] == cropped["faces"] - simulated["drop"]
    dataset = _metrics(project, "dataset")
    dropped = dataset["duplicates"]["dropped"]
    merged_custom = dataset["all"]["custom"]["total"] + sum(dropped[s]["custom"] for s in SPLITS)
    assert merged_custom == reviewed["kept"] + reviewed["relabelled"]
    index = (project / "data/processed/index.csv").read_text().splitlines()
    assert len(index) - 1 == dataset["all"]["all"]["total"]
    trained = _metrics(project, "train")
    assert (trained["iterations"], trained["resumed_from"]) == (SMALL_TRAIN["num_iters"], 0)
    assert (project / "models/stargan/generator.pt").is_file()
    losses = (project / "metrics/train_loss.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in losses[1:]] == ["2", "4"]
    samples = {path.name for path in (project / "metrics/samples").iterdir()}
    assert {"all.png", "happy.png"} <= samples
    judged = _metrics(project, "classifier")
    confusion = (project / "metrics/classifier_confusion.csv").read_text().splitlines()
    assert len(confusion) - 1 == judged["test_images"] > 0
    assert (project / "models/classifier/classifier.pt").is_file()

    before = _tree_state(project / "data")
    second = _run(["dvc", "repro"], project)
    assert "didn't change" in second.stdout
    assert "Running stage" not in second.stdout
    assert _tree_state(project / "data") == before


@pytest.mark.slow
def test_exp_run_overrides_a_param_and_records_an_experiment(project: Path) -> None:
    _run(["dvc", "repro"], project)  # the baseline: a no-op after the first test
    # demo.seed is not in params.yaml: `+` adds it, and it becomes this experiment's column.
    _run(["dvc", "exp", "run", "-n", "seed1", "-S", "+demo.seed=1", "-S", "layers=1"], project)
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], project).stdout)
    experiments = [
        exp
        for commit in shown
        for exp in (commit.get("experiments") or [])
        if exp.get("name") == "seed1"
    ]
    assert experiments, shown
    revision = experiments[0]["revs"][0]["data"]
    assert revision["params"]["params.yaml"]["data"]["demo"]["seed"] == 1
    assert revision["params"]["params.yaml"]["data"]["layers"] == 1
    assert list(revision["metrics"]) == ["metrics/summary.json"]
    summary = revision["metrics"]["metrics/summary.json"]["data"]
    assert summary["faces"]["train"] > 0 and 0 <= summary["custom"]["judge_real"] <= 1
    assert _metrics(project, "train")["iterations"] == SMALL_TRAIN["num_iters"]

    # One terminal width, or close: the params that set runs apart, the headline, the data's
    # hashes; the per-emotion breakdowns are files (metrics/*.json), not columns.
    table = _run(["dvc", "exp", "show", "--csv"], project).stdout.splitlines()
    columns = [name for name in table[0].split(",") if name not in ("rev", "typ", "parent")]
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["demo"]["seed"] == 1  # the experiment's params, applied to the workspace
    named = flatten_params(params) | flatten_params(summary)
    assert set(columns) == {"Experiment", "Created"} | set(named) | data_dependencies(project)

    # Each training is its own MLflow run in the project's store, with its samples and model.
    store = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("emogan").experiment_id])
    runs = [run for run in runs if run.info.run_name.startswith("stargan")]  # not classifier's
    [experiment] = [run for run in runs if run.data.tags.get("dvc_exp_name") == "seed1"]
    baseline = next(run for run in runs if run.data.params["layers"] == str(SMALL_LAYERS))
    assert experiment.data.params["layers"] == "1"
    assert experiment.data.params["num_iters"] == str(SMALL_TRAIN["num_iters"])
    assert experiment.data.tags["data_hash"] != baseline.data.tags["data_hash"]
    registered = {v.run_id for v in client.search_model_versions("name='emogan-stargan'")}
    for run in (baseline, experiment):
        run_id = run.info.run_id
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run_id, "G/loss_rec")] == [2, 4]
        logged = {a.path for folder in ("samples", "samples/final")
                  for a in client.list_artifacts(run_id, folder)}  # fmt: skip
        assert {"samples/iter_4.png", "samples/final/all.png"} <= logged
        assert run_id in registered


@pytest.mark.slow
def test_exp_run_with_an_impossible_param_names_the_key(project: Path) -> None:
    result = _run(["dvc", "exp", "run", "-S", "demo.photos_per_emotion=-1"], project, check=False)
    assert result.returncode != 0
    assert "params.yaml: demo.photos_per_emotion: Input should be greater than 0 (got -1)" in (
        result.stdout + result.stderr
    )
