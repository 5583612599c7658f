"""The evaluate stage: numbers instead of eyeballing, as the StarGAN paper measured translations.

Every test face is translated into every one of the 7 emotions and the classifier stage's judge
(trained on real train images only) classifies each translation. Every score is given overall
and per source of the faces (FER2013's, and the custom crops), beside the judge's accuracy on
that source's real test faces: a judge that rates translations above real faces of the same
source is being fooled, and the StarGAN paper reports both. Per scope:
- judge_accuracy_real: the judge on the real test faces;
- target accuracy: the share of translations the judge assigns to their target emotion, over all
  pairs, over the changed ones only (target != the face's own emotion), and per target;
- keep L1: mean |G(x, target) - x| over changed pairs, in [-1, 1] units. A generator can fool a
  judge by painting class-specific texture over the face; then accuracy is high but so is keep L1;
- cycle L1: mean |G(G(x, target), source) - x| over changed pairs; identity L1: |G(x, source) - x|;
- distinctness: mean |G(x, a) - G(x, b)| over the 21 pairs of targets of a face: how much the 7
  translations differ. Near 0, the generator ignores the target (collapse);
- FID in the judge's feature space between real test faces and changed translations, beside the
  same distance between real train and real test faces: the floor that sampling alone gives;
- with evaluate.inception_weights (a local file: nothing is downloaded), the standard FID of
  torchmetrics' Inception v3 between the same two sets (overall only).
Three warnings are raised per scope, as flags in the metrics, lines on stderr and MLflow tags:
judge_fooled, collapsed (distinctness near 0) and copies_input (keep L1 near 0). BENCHMARKS.md
says how their thresholds were chosen.
"""

import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from emogan import atomic
from emogan.classifier import confusion_csv, embed, load_classifier, rounded_mean
from emogan.config import Params, project_root
from emogan.data.merge import SOURCES
from emogan.data.processed import Dataset, check_images, load_split
from emogan.device import resolve_device
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError
from emogan.progress import STAGE_TIMING, progress_bar, stage_timing
from emogan.serving import REGISTERED_MODEL, model_description
from emogan.stargan.trained import CONFIG_FILE, load_generator, training_run_id
from emogan.tracking import TrainingRun

C_DIM = len(EMOTIONS)
SCOPES = ("overall", *SOURCES)
# Mean absolute differences in [-1, 1] units below which the 7 translations of a face count as
# one image (collapsed) or a translation as its input (copies_input). One drawn person in the 7
# emotions differs by 0.030 at 32 px (brows alone 0.019, the mouth alone 0.012; sad from
# neutral 0.011); 0.01 is a third of that, and about one grey level of 255 (BENCHMARKS.md).
COLLAPSED_DISTINCTNESS = 0.01
COPY_KEEP_L1 = 0.01
# Translations outscore real faces "by a margin" when they beat the judge's real-face accuracy
# by more than twice its standard error over that source's test faces (at least 2 points).
FOOLED_MIN_MARGIN = 0.02
WARNINGS_TAG = "eval.warnings"  # MLflow search: tags."eval.warnings" != 'none'


@dataclass
class Translations:
    """One entry per (test face, target emotion) pair."""

    label: torch.Tensor  # the face's own emotion
    source: torch.Tensor  # the face's source, an index into SOURCES
    target: torch.Tensor
    predicted: torch.Tensor  # the judge's label of the translation
    keep_l1: torch.Tensor  # mean |G(x, target) - x| of each translation
    cycle_l1: torch.Tensor  # mean |G(G(x, target), source) - x|
    distinctness: torch.Tensor  # the face's mean |G(x, a) - G(x, b)| over pairs of targets
    features: torch.Tensor  # the judge's features of each translation


@dataclass
class JudgedFaces:
    """The judge's view of the real faces of one split."""

    labels: torch.Tensor
    sources: torch.Tensor
    predicted: torch.Tensor
    features: torch.Tensor


@torch.no_grad()
def translate_test_set(
    G: torch.nn.Module,
    test: Dataset,
    judge: torch.nn.Module,
    batch_size: int = 256,
    on_changed: Callable[[torch.Tensor], None] | None = None,
) -> Translations:
    """Translate every test face into every emotion and back, in batches; all results on the CPU.
    on_changed, when given, sees every batch of translations whose target is not the face's own
    emotion (the images themselves are not kept)."""
    parts: dict[str, list[torch.Tensor]] = {field.name: [] for field in fields(Translations)}
    with progress_bar(len(test.labels) * C_DIM, "evaluate", "translation") as bar:
        for faces, labels, sources in zip(
            test.images.split(batch_size),
            test.labels.split(batch_size),
            test.sources.split(batch_size),
            strict=True,
        ):
            all_fakes = []
            for target in range(C_DIM):
                targets = torch.full_like(labels, target)
                fakes = G(faces, F.one_hot(targets, C_DIM).float())
                all_fakes.append(fakes.flatten(1))
                back = G(fakes, F.one_hot(labels, C_DIM).float())
                features, logits = embed(judge, fakes)
                changed = labels != target
                if on_changed is not None and changed.any():
                    on_changed(fakes[changed])
                for name, value in (
                    ("label", labels),
                    ("source", sources),
                    ("target", targets),
                    ("predicted", logits.argmax(1)),
                    ("keep_l1", (fakes - faces).abs().mean((1, 2, 3))),
                    ("cycle_l1", (back - faces).abs().mean((1, 2, 3))),
                    ("features", features),
                ):
                    parts[name].append(value.cpu())
                bar.update(len(faces))
            distinct = distinctness(torch.stack(all_fakes, 1)).cpu()
            parts["distinctness"] += [distinct] * C_DIM  # one entry per target, as the others
    return Translations(**{name: torch.cat(values) for name, values in parts.items()})


def distinctness(translations: torch.Tensor) -> torch.Tensor:
    """N x T x D (each face's translations into T targets, flattened) -> N: the mean absolute
    difference between two translations of a face, over its T (T - 1) / 2 pairs."""
    n, t, d = translations.shape
    distances = torch.cdist(translations, translations, p=1)  # N x T x T sums of |a - b|
    return distances.sum((1, 2)) / (t * (t - 1) * d)  # each pair is counted twice


@torch.no_grad()
def judge_faces(judge: torch.nn.Module, data: Dataset, batch_size: int) -> JudgedFaces:
    """The judge's label and features of every real face of data, on the CPU."""
    features, logits = zip(*(embed(judge, x) for x in data.images.split(batch_size)), strict=True)
    return JudgedFaces(
        data.labels.cpu(),
        data.sources.cpu(),
        torch.cat(logits).argmax(1).cpu(),
        torch.cat(features).cpu(),
    )


def in_scope(sources: torch.Tensor, scope: str) -> torch.Tensor:
    """Which entries belong to scope: all of them, or one source's."""
    if scope == "overall":
        return torch.ones_like(sources, dtype=torch.bool)
    return sources == SOURCES.index(scope)


def score_translations(
    done: Translations, test: JudgedFaces, train: JudgedFaces | None = None
) -> dict:
    """The metrics of the module doc, overall and per source, from translate_test_set's output
    and the judge's view of the real test faces (and of the real train faces, for the FID
    floor). A source without test faces has its keys, all None."""
    scores: dict = {"chance": round(1 / C_DIM, 4), "translations": len(done.target)}
    for scope in SCOPES:
        pairs, faces = in_scope(done.source, scope), in_scope(test.sources, scope)
        scores[scope] = _scope_scores(done, pairs, test, faces) | {
            "fid_classifier_real": None
            if train is None
            else _fid(train.features[in_scope(train.sources, scope)], test.features[faces])
        }
        scores[scope] |= diagnose(scores[scope])
    return scores


def _scope_scores(
    done: Translations, pairs: torch.Tensor, test: JudgedFaces, faces: torch.Tensor
) -> dict:
    changed = pairs & (done.target != done.label)
    hits = done.predicted == done.target
    per_target = {
        emotion: rounded_mean(hits[changed & (done.target == label)])
        for label, emotion in enumerate(EMOTIONS)
    }
    return {
        "test_images": int(faces.sum()),
        "judge_accuracy_real": rounded_mean((test.predicted == test.labels)[faces]),
        "target_accuracy": rounded_mean(hits[pairs]),
        "target_accuracy_changed": rounded_mean(hits[changed]),
        "per_target": per_target,  # changed pairs only; None if every test face shows it
        "keep_l1": rounded_mean(done.keep_l1[changed]),
        "cycle_l1": rounded_mean(done.cycle_l1[changed]),
        "identity_l1": rounded_mean(done.keep_l1[pairs & ~changed]),
        "distinctness": rounded_mean(done.distinctness[pairs]),  # each face C_DIM times
        "fid_classifier": _fid(test.features[faces], done.features[changed]),
    }


def diagnose(scores: dict) -> dict[str, bool | None]:
    """The warning flags of one scope's scores (None where it has no test faces)."""
    if not scores["test_images"]:
        return {"judge_fooled": None, "collapsed": None, "copies_input": None}
    return {
        "judge_fooled": scores["target_accuracy_changed"] is not None
        and scores["target_accuracy_changed"]
        > scores["judge_accuracy_real"] + fooled_margin(scores),
        "collapsed": scores["distinctness"] < COLLAPSED_DISTINCTNESS,
        "copies_input": scores["keep_l1"] is not None and scores["keep_l1"] < COPY_KEEP_L1,
    }


def fooled_margin(scores: dict) -> float:
    """How far translations may outscore real faces before the judge counts as fooled: twice
    the standard error of its accuracy on the scope's real test faces, at least 2 points."""
    accuracy, n = scores["judge_accuracy_real"], scores["test_images"]
    return max(FOOLED_MIN_MARGIN, 2 * math.sqrt(accuracy * (1 - accuracy) / n))


def warning_lines(scores: dict) -> dict[str, str]:
    """One line per raised warning, keyed `<scope>.<flag>`, for stderr and MLflow tags."""
    lines = {}
    for scope in SCOPES:
        s = scores[scope]
        if s["judge_fooled"]:
            lines[f"{scope}.judge_fooled"] = (
                f"{scope}: translations score {s['target_accuracy_changed']:.3f} target accuracy "
                f"on changed pairs, above the judge's {s['judge_accuracy_real']:.3f} on real "
                f"{scope} test faces: the judge is being fooled; look at metrics/samples"
            )
        if s["collapsed"]:
            lines[f"{scope}.collapsed"] = (
                f"{scope}: the 7 translations of a face are near-identical (distinctness "
                f"{s['distinctness']:.4f} < {COLLAPSED_DISTINCTNESS}): G ignores the target"
            )
        if s["copies_input"]:
            lines[f"{scope}.copies_input"] = (
                f"{scope}: translations are near-copies of their input (keep L1 "
                f"{s['keep_l1']:.4f} < {COPY_KEEP_L1})"
            )
    return lines


def _fid(real: torch.Tensor, fake: torch.Tensor) -> float | None:
    """frechet_distance rounded, None with fewer than 2 faces on a side (no covariance)."""
    if min(len(real), len(fake)) < 2:
        return None
    return round(frechet_distance(real, fake), 4)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) between two N x D feature sets."""
    a, b = a.double(), b.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # tr (S_a S_b)^1/2 = tr (S_a^1/2 S_b S_a^1/2)^1/2: a symmetric PSD matrix, so eigvalsh is
    # exact where a general matrix square root of S_a S_b would be numerically fragile.
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    distance = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle
    return max(distance.item(), 0.0)


def evaluate_translations(
    params: Params,
    model_dir: Path,
    classifier_dir: Path,
    data_dir: Path,
    metrics_path: Path,
    summary_path: Path,
    confusion_path: Path,
) -> dict:
    """The evaluate stage: writes metrics_path, its headline to summary_path and one
    `target,predicted` row per translation to confusion_path, and logs the metrics (eval/...)
    and the confusion rows to the training's MLflow run. Returns the metrics."""
    started = time.perf_counter()
    cfg = params.evaluate
    device = resolve_device(cfg.device, "evaluate.device")
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    G, config = load_generator(model_dir)
    judge = load_classifier(Path(classifier_dir), device)
    test = load_split(data_dir, "test", device)
    check_images(
        test, config["channels"], config["image_size"], data_dir, str(Path(model_dir) / CONFIG_FILE)
    )
    inception = None
    if cfg.inception_weights is not None:
        inception = InceptionFid(cfg.inception_weights, device)
        inception.add(test.images, real=True)
    on_changed = None if inception is None else lambda fakes: inception.add(fakes, real=False)
    done = translate_test_set(G.to(device), test, judge, cfg.batch_size, on_changed)
    train = load_split(data_dir, "train", device)
    metrics = score_translations(
        done, judge_faces(judge, test, cfg.batch_size), judge_faces(judge, train, cfg.batch_size)
    )
    if inception is not None:
        metrics["overall"]["fid_inception"] = round(inception.compute(), 4)
    metrics |= stage_timing(started)
    atomic.write_json(Path(metrics_path), metrics)
    atomic.write_json(Path(summary_path), headline_scores(metrics, len(train.labels)))
    atomic.write_text(
        Path(confusion_path), confusion_csv(done.target, done.predicted, ("target", "predicted"))
    )
    _log_to_training_run(params, model_dir, config, metrics, Path(confusion_path))
    return metrics


def headline_scores(metrics: dict, train_faces: int) -> dict:
    """What `dvc exp show` lists of a run: per source the translations' target accuracy on
    changed pairs beside the judge's accuracy on real test faces of that source (read one
    beside the other), how much of each face is kept, the FID, the faces and the warnings.
    The breakdowns stay in metrics_path."""
    return {
        **{
            scope: {
                "translated": metrics[scope]["target_accuracy_changed"],
                "judge_real": metrics[scope]["judge_accuracy_real"],
            }
            for scope in SCOPES
        },
        "keep_l1": metrics["overall"]["keep_l1"],
        "fid": metrics["overall"]["fid_classifier"],
        "faces": {"train": train_faces, "test": metrics["overall"]["test_images"]},
        "warnings": len(warning_lines(metrics)),
    }


class InceptionFid:
    """Standard FID through torchmetrics (the pytorch-fid port of the original Inception v3)
    with its weights read from a local file, since nothing can be downloaded at run time."""

    def __init__(self, weights: Path, device: torch.device) -> None:
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
        except ImportError:
            raise EmoganError(
                "evaluate.inception_weights is set but torchmetrics is not installed: "
                "pip install 'emogan[fid]'"
            ) from None
        if not Path(weights).is_file():
            raise EmoganError(f"evaluate.inception_weights: {weights}: no such file")
        try:
            metric = FrechetInceptionDistance(
                normalize=True, feature_extractor_weights_path=str(weights)
            )
        except (RuntimeError, OSError, pickle.UnpicklingError) as error:
            first = str(error).splitlines()[0]
            raise EmoganError(
                f"evaluate.inception_weights: {weights}: not Inception v3 FID weights ({first})"
            ) from None
        self.metric = metric.to(device)

    def add(self, images: torch.Tensor, real: bool) -> None:
        """Images in [-1, 1], gray or RGB, any size (resized to 299 px inside)."""
        rgb = images.expand(-1, 3, -1, -1) if images.size(1) == 1 else images
        self.metric.update(rgb.add(1).div(2).clamp(0, 1), real=real)

    def compute(self) -> float:
        return self.metric.compute().item()


def _log_to_training_run(
    params: Params,
    model_dir: Path,
    config: dict,
    metrics: dict,
    confusion_path: Path,
) -> None:
    run_id = training_run_id(model_dir)
    if not run_id:
        return
    run = TrainingRun.attach(params.mlflow, project_root(), run_id)
    run.log_metrics(mlflow_metrics(metrics), config["num_iters"])
    # One tag, always written, so a rerun that clears a warning clears it in MLflow too.
    run.set_tags({WARNINGS_TAG: "\n".join(warning_lines(metrics).values()) or "none"})
    run.log_artifact(confusion_path, "eval")
    run.describe_model(REGISTERED_MODEL, model_description(config, metrics))


def mlflow_metrics(metrics: dict) -> dict[str, float]:
    """eval.json as MLflow metrics: eval/<scope>/<name>, eval/<scope>/target_accuracy/<emotion>;
    flags, empty values and the stage's timing left out (flags are tags)."""
    flat = {
        f"eval/{key}": value for key, value in metrics.items() if key not in (*SCOPES, STAGE_TIMING)
    }
    for scope in SCOPES:
        for key, value in metrics[scope].items():
            if key == "per_target":
                flat |= {f"eval/{scope}/target_accuracy/{e}": v for e, v in value.items()}
            elif not isinstance(value, bool):
                flat[f"eval/{scope}/{key}"] = value
    return {key: value for key, value in flat.items() if value is not None}
