"""All MLflow calls of emogan but the generator's python_function model (emogan.serving).

A training must not die because its bookkeeping did: once a `TrainingRun` exists, every call
is best-effort. The first tracking failure is reported as one line on stderr, later ones are
only counted, and the caller carries on.

Every call talks to one explicit tracking URI through its own `MlflowClient`, so a process that
also uses MLflow's global state elsewhere is not disturbed. The one exception is
`mlflow.pytorch.log_model`, which has no client argument: the global URI is pointed at this run's
store for the duration of that call and restored afterwards.
"""

import getpass
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import mlflow.pyfunc
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.time import get_current_time_millis

from emogan.config import MlflowConfig
from emogan.data.processed import dataset_profile
from emogan.errors import EmoganError
from emogan.serving import GENERATOR_MODEL, FaceTranslator, log_translator

MAX_PARAM_CHARS = 6000  # MLflow refuses longer param values, and with them the whole batch
BATCH_SIZE = 100  # the most params or tags MLflow accepts in one log_batch call
REPORT_HEAD_CHARS, REPORT_TAIL_CHARS = 200, 150  # of a failure reported on one line

# MLflow's own defaults (7 retries with backoff factor 2, a 120 s timeout) stall training for
# minutes per call while a server is down. A user's own setting of any of these wins.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # Ending a run on a server prints "View run ... at ..." to stdout, in the middle of our output.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # A bar per file downloaded has no place in a training's or a command's output.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

# Creating a sqlite store's tables, registering a model version and logging the generator
# announce themselves at INFO level on stderr.
CHATTY_LOGGERS = (
    "mlflow.store.db.utils",
    "alembic",
    "mlflow.store.model_registry.abstract_store",
    "mlflow.pyfunc",  # "Validating input example ..."
)
# What kind of experiment this is, in MLflow 3's terms: training runs. MLflow 3.0-3.x UIs open
# an experiment on its kind's pages; 3.17's opens on the GenAI pages unless the browser chose
# "Model training" once, or the address asks for it (TRAINING_VIEW, what `make mlflow-ui` shows).
EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING_KIND = (EXPERIMENT_KIND, "custom_model_development")
TRAINING_VIEW = "workflowType=machine_learning"
FINAL_SAMPLES = "samples/final"  # where the samples stage logs the trained generator's grids
SAMPLE_GRID = f"{FINAL_SAMPLES}/all.png"
DATA_CONTEXT = "mlflow.data.context"  # a dataset input's role

T = TypeVar("T")


def resolve_tracking_uri(cfg: MlflowConfig, root: Path) -> str:
    """cfg.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db (absolute)."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if from_env := os.environ.get("MLFLOW_TRACKING_URI"):
        return from_env
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def training_runs_page(cfg: MlflowConfig, root: Path, ui_url: str) -> str:
    """The address of cfg.experiment's training runs in the MLflow UI at ui_url (its list of
    experiments while the experiment does not exist yet)."""
    experiment = _open_store(resolve_tracking_uri(cfg, root)).get_experiment_by_name(cfg.experiment)
    page = f"experiments/{experiment.experiment_id}" if experiment else "experiments"
    return f"{ui_url}/#/{page}?{TRAINING_VIEW}"


def git_commit(root: Path) -> str | None:
    """The commit checked out at root, "-dirty" when tracked files differ from it; None outside
    git. (A `dvc exp run -S ...` edits params.yaml, so such runs are dirty by design.)"""
    try:
        commit = _git(root, "rev-parse", "HEAD")
        changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if changes else commit


def run_tags(
    root: Path, device: torch.device, exp_name: str | None, data_hash: str, entry_point: str
) -> dict[str, str]:
    """What every run records of where it ran: the data, device, torch version, the command
    (the UI's Source column), the user, the git commit and, under `dvc exp run`, the
    experiment's name."""
    tags = {
        "data_hash": data_hash,
        "device": str(device),
        "torch_version": torch.__version__,
        "mlflow.source.name": entry_point,
        "mlflow.source.type": "LOCAL",
        "mlflow.user": getpass.getuser(),
    }
    if commit := git_commit(root):
        tags["mlflow.source.git.commit"] = commit  # shown as the run's commit in the MLflow UI
    if exp_name:
        tags["dvc_exp_name"] = exp_name
    return tags


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


class TrainingRun:
    """One MLflow run of one training. After start, every call is best-effort: a tracking
    failure (server down, disk full, ...) is reported once as one line on stderr naming the
    tracking URI and the error, later failures are counted silently, and training goes on.
    `failures` counts them. When the run could not even be created or found, or is `disabled`,
    `run_id` is None and every later call does nothing."""

    def __init__(self, tracking_uri: str | None) -> None:
        """Open the store at tracking_uri; None opens none (`disabled`)."""
        self.tracking_uri = tracking_uri
        self.run_id: str | None = None
        self.failures = 0
        # Opening a store can fail too (two queue workers creating one sqlite schema at once),
        # and that must not stop training either.
        self._client = self._attempt(lambda: _open_store(tracking_uri)) if tracking_uri else None

    @classmethod
    def disabled(cls) -> "TrainingRun":
        """A run that tracks nothing, without a store: what every rank but rank 0 logs to under
        torchrun, so that a training has one MLflow run."""
        return cls(None)

    @classmethod
    def start(
        cls,
        cfg: MlflowConfig,
        root: Path,
        *,
        run_id: str | None,
        run_name: str,
        params: Mapping[str, object],
        tags: Mapping[str, str],
    ) -> "TrainingRun":
        """Resume run_id when given and it exists in this store (status back to RUNNING; params
        already there are not logged again, so a changed value keeps its first one), else
        create a new run in experiment cfg.experiment (created if missing) with these params
        and tags."""
        run = cls(resolve_tracking_uri(cfg, root))
        if run._client is not None:
            run.run_id = run._attempt(
                lambda: run._resume_or_create(cfg.experiment, run_id, run_name, params, tags)
            )
        return run

    @classmethod
    def attach(cls, cfg: MlflowConfig, root: Path, run_id: str) -> "TrainingRun":
        """Log more to a finished run (the samples and evaluate stages use this); does not
        change its status."""
        run = cls(resolve_tracking_uri(cfg, root))
        if run._client is not None:
            run.run_id = run._attempt(lambda: run._client.get_run(run_id).info.run_id)
        return run

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log metrics at this step; NaN and infinite values are stored as such."""
        timestamp = get_current_time_millis()
        entries = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        self._when_running(lambda run_id: self._log_batch(run_id, metrics=entries))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set (or overwrite) these tags of the run."""
        entries = [RunTag(key, value) for key, value in tags.items()]
        self._when_running(lambda run_id: self._log_batch(run_id, tags=entries))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Log a file, or a folder with everything in it, under artifact_path with its own
        name: `samples/` logged with artifact_path "eval" lands at "eval/samples/"."""
        path = Path(path)
        if path.is_dir():
            destination = f"{artifact_path}/{path.name}" if artifact_path else path.name
            self._when_running(
                lambda run_id: self._client.log_artifacts(run_id, str(path), destination)
            )
        else:
            self._when_running(
                lambda run_id: self._client.log_artifact(run_id, str(path), artifact_path)
            )

    def log_generator(
        self,
        model_dir: Path,
        config: dict,
        example: np.ndarray,
        registered_name: str,
        description: str,
    ) -> None:
        """Log the generator of model_dir (the train stage's folder, trained with config) as
        an MLflow python_function model named "generator" (emogan.serving) with example (uint8
        faces) as its input example, and register it under registered_name (a new version each
        call) with description, followed by links to this run and its sample grid;
        `mlflow.pyfunc.load_model("models:/<registered_name>/<version>")` loads it."""
        self._when_running(
            lambda run_id: self._log_generator(
                run_id, model_dir, config, example, registered_name, description
            )
        )

    def log_dataset(self, data_dir: Path, digest: str, context: str) -> None:
        """Record data_dir (data/processed) as an input of the run, the runs table's Dataset
        column: named by its path, with digest (dvc.lock's hash of it), its absolute path as
        source and its images per split and emotion as profile; context is its role
        ("training"). MLflow keeps one input per dataset and run: a second call is a no-op."""
        data_dir = Path(data_dir)
        dataset = Dataset(
            name=data_dir.as_posix(),
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": data_dir.resolve().as_uri()}),
            profile=json.dumps(dataset_profile(data_dir)),
        )
        entry = DatasetInput(dataset, [InputTag(DATA_CONTEXT, context)])
        self._when_running(lambda run_id: self._client.log_inputs(run_id, datasets=[entry]))

    def describe_model(self, registered_name: str, description: str) -> None:
        """Set the description of every version of registered_name that this run registered."""
        self._when_running(
            lambda run_id: self._describe_model(run_id, registered_name, description)
        )

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ended: FINISHED, FAILED or KILLED."""
        self._when_running(lambda run_id: self._client.set_terminated(run_id, status))

    def _resume_or_create(
        self,
        experiment: str,
        run_id: str | None,
        run_name: str,
        params: Mapping[str, object],
        tags: Mapping[str, str],
    ) -> str:
        run = self._existing_run(run_id) if run_id else None
        if run is None:
            experiment_id = self._experiment_id(experiment)
            run = self._client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        else:
            self._client.update_run(run.info.run_id, status="RUNNING")
            self._log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        new_params = {
            key: value
            for key, value in flatten_params(params).items()
            if key not in run.data.params
        }
        self._log_batch(run.info.run_id, params=[Param(k, v) for k, v in new_params.items()])
        return run.info.run_id

    def _existing_run(self, run_id: str) -> Run | None:
        try:
            run = self._client.get_run(run_id)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return None if run.info.lifecycle_stage == "deleted" else run

    def _experiment_id(self, name: str) -> str:
        experiment = self._client.get_experiment_by_name(name)
        if experiment is not None:
            if EXPERIMENT_KIND not in experiment.tags:  # a kind chosen in the UI stays
                self._client.set_experiment_tag(experiment.experiment_id, *TRAINING_KIND)
            return experiment.experiment_id
        try:
            return self._client.create_experiment(
                name, artifact_location=self._artifact_root(), tags=dict([TRAINING_KIND])
            )
        except MlflowException as error:
            # Another training (a parallel `dvc exp run` queue) created it meanwhile.
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self._client.get_experiment_by_name(name).experiment_id

    def _artifact_root(self) -> str | None:
        """For a sqlite store, a folder `mlruns` beside the database: MLflow's default is
        ./mlruns under whatever directory the process happens to run in. Servers and other
        stores choose their own."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return None
        database = Path(self.tracking_uri.removeprefix("sqlite:///").split("?")[0])
        return (database.resolve().parent / "mlruns").as_uri()

    def _log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
    ) -> None:
        for batch in _batches(metrics):
            self._client.log_batch(run_id, metrics=batch)
        for batch in _batches(params):
            self._client.log_batch(run_id, params=batch)
        for batch in _batches(tags):
            self._client.log_batch(run_id, tags=batch)

    def _log_generator(
        self,
        run_id: str,
        model_dir: Path,
        config: dict,
        example: np.ndarray,
        registered_name: str,
        description: str,
    ) -> None:
        run = self._client.get_run(run_id)
        # Created here rather than by Model.log, which would pick the experiment from the
        # environment or an active run before looking at run_id.
        model = self._client.create_logged_model(
            run.info.experiment_id,
            name=GENERATOR_MODEL,
            source_run_id=run_id,
            params=run.data.params,
        )
        with _global_tracking_uri(self.tracking_uri):
            log_translator(model_dir, config, example, run_id, model.model_id)
            # A sqlite registry looks the logged model up through the global URI too.
            self._register(registered_name, model.model_id, run, description)

    def _register(self, name: str, model_id: str, run: Run, description: str) -> None:
        # Done here, not by log_model(registered_model_name=...), which prints two lines to
        # stderr and registers in the global registry rather than in this run's store.
        try:
            self._client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        self._client.create_model_version(
            name,
            source=f"models:/{model_id}",
            run_id=run.info.run_id,
            model_id=model_id,
            description=_with_links(description, run),
        )

    def _describe_model(self, run_id: str, name: str, description: str) -> None:
        text = _with_links(description, self._client.get_run(run_id))
        for version in self._client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
            self._client.update_model_version(name, version.version, text)

    def _when_running(self, action: Callable[[str], object]) -> None:
        if self.run_id is not None:
            run_id = self.run_id
            self._attempt(lambda: action(run_id))

    def _attempt(self, action: Callable[[], T]) -> T | None:
        try:
            with _environment(HTTP_SETTINGS):
                return action()
        except Exception as error:  # any tracking failure at all must leave training running
            self.failures += 1
            if self.failures == 1:
                print(
                    f"emogan: MLflow tracking to {self.tracking_uri} failed: {_one_line(error)}"
                    " (training goes on; later tracking failures are only counted)",
                    file=sys.stderr,
                )
            return None


def load_logged_generator(model_uri: str, tracking_uri: str) -> tuple[torch.nn.Module, dict]:
    """The generator that `TrainingRun.log_generator` logged, on the CPU, and the config it was
    trained with (channels, image_size, ...). model_uri is any MLflow model URI
    (`models:/<name>/<version>`, `models:/<name>@<alias>`, `runs:/<run_id>/generator`), resolved
    in the store at tracking_uri, the registry included. A store that cannot be reached, a URI
    that does not resolve or a model that is not an emogan generator is an EmoganError of one
    line."""
    _quiet_mlflow_loggers()
    try:
        with _environment(HTTP_SETTINGS), _global_tracking_uri(tracking_uri):
            translator = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    except (MlflowException, OSError) as error:
        raise EmoganError(
            f"{model_uri}: cannot load it from the MLflow store {tracking_uri}: {_one_line(error)}"
        ) from None
    if not isinstance(translator, FaceTranslator):
        raise EmoganError(f"{model_uri}: a {type(translator).__name__}, not an emogan generator")
    return translator.generator, translator.config


def _open_store(tracking_uri: str) -> MlflowClient:
    """A client of the store at tracking_uri whose registry lives in the same store, whatever
    MLflow's global registry setting is."""
    _quiet_mlflow_loggers()
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def _quiet_mlflow_loggers() -> None:
    """Raise CHATTY_LOGGERS to WARNING: done when emogan opens a store, not when it is imported,
    as these levels hold for the whole process."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _with_links(description: str, run: Run) -> str:
    """description, then links (within the MLflow UI) to the run and its final sample grid."""
    page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return (
        f"{description}\n\nTrained by run [{run.info.run_name}]({page}); sample grid: "
        f"[{SAMPLE_GRID}]({page}/artifactPath/{SAMPLE_GRID})."
    )


def flatten_params(params: Mapping[str, object], prefix: str = "") -> dict[str, str]:
    """Nested mappings become dotted keys ({"train": {"g_lr": 1e-4}} -> "train.g_lr"); values
    become strings cut to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


def _batches(items: Sequence[T]) -> Iterator[list[T]]:
    for start in range(0, len(items), BATCH_SIZE):
        yield list(items[start : start + BATCH_SIZE])


def _one_line(error: Exception) -> str:
    """The error on one line; a long one keeps its head (what was tried) and its tail (the
    root cause, such as "Connection refused", which HTTP errors put last)."""
    line = f"{type(error).__name__}: {' '.join(str(error).split())}"
    if len(line) <= REPORT_HEAD_CHARS + REPORT_TAIL_CHARS:
        return line
    return f"{line[:REPORT_HEAD_CHARS]} ... {line[-REPORT_TAIL_CHARS:]}"


@contextmanager
def _environment(defaults: Mapping[str, str]) -> Iterator[None]:
    """Set these environment variables where unset, for the block only."""
    added = [name for name in defaults if name not in os.environ]
    os.environ.update({name: defaults[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at uri for the block, then put back both the
    URI set before, if any, and $MLFLOW_TRACKING_URI, which set_tracking_uri overwrites."""
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    # get_tracking_uri() prefers a URI set in code to the environment's: one that differs from
    # the environment's was set in code.
    in_code = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None if in_code == environment else in_code)  # None: unset
        if environment is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = environment
