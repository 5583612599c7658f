"""The evaluate stage: numbers instead of eyeballing, as the StarGAN paper measured translations.

Every test face is translated into every one of the 7 emotions and the classifier stage's judge
(trained on real train images only) classifies each translation. Reported:
- target accuracy: the share of translations the judge assigns to their target emotion, over all
  pairs, over the changed ones only (target != the face's own emotion), and per target;
- keep L1: mean |G(x, target) - x| over changed pairs, in [-1, 1] units. A generator can fool a
  judge by painting class-specific texture over the face; then accuracy is high but so is keep L1;
- cycle L1: mean |G(G(x, target), source) - x| over changed pairs; identity L1: |G(x, source) - x|;
- FID in the judge's feature space between real test faces and changed translations, beside the
  same distance between real train and real test faces: the floor that sampling alone gives;
- with evaluate.inception_weights (a local file: nothing is downloaded), the standard FID of
  torchmetrics' Inception v3 between the same two sets.
"""

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from emogan import atomic
from emogan.classifier import confusion_csv, embed, load_classifier, rounded_mean
from emogan.config import Params, project_root
from emogan.data.processed import Dataset, check_images, load_split
from emogan.device import resolve_device
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError
from emogan.stargan.sample import load_generator
from emogan.tracking import TrainingRun

C_DIM = len(EMOTIONS)
DEFAULT_MODEL_DIR = Path("models/stargan")
DEFAULT_CLASSIFIER_DIR = Path("models/classifier")
DEFAULT_DATA_DIR = Path("data/processed")
DEFAULT_METRICS_PATH = Path("metrics/eval.json")
DEFAULT_CONFUSION_PATH = Path("metrics/eval_confusion.csv")


@dataclass
class Translations:
    """One entry per (test face, target emotion) pair, in target-major order."""

    source: torch.Tensor  # the face's own label
    target: torch.Tensor
    predicted: torch.Tensor  # the judge's label of the translation
    keep_l1: torch.Tensor  # mean |G(x, target) - x| of each translation
    cycle_l1: torch.Tensor  # mean |G(G(x, target), source) - x|
    features: torch.Tensor  # the judge's features of each translation


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
    for target in range(C_DIM):
        for faces, labels in zip(
            test.images.split(batch_size), test.labels.split(batch_size), strict=True
        ):
            targets = torch.full_like(labels, target)
            fakes = G(faces, F.one_hot(targets, C_DIM).float())
            back = G(fakes, F.one_hot(labels, C_DIM).float())
            features, logits = embed(judge, fakes)
            changed = labels != target
            if on_changed is not None and changed.any():
                on_changed(fakes[changed])
            for name, value in (
                ("source", labels),
                ("target", targets),
                ("predicted", logits.argmax(1)),
                ("keep_l1", (fakes - faces).abs().mean((1, 2, 3))),
                ("cycle_l1", (back - faces).abs().mean((1, 2, 3))),
                ("features", features),
            ):
                parts[name].append(value.cpu())
    return Translations(**{name: torch.cat(values) for name, values in parts.items()})


def score_translations(done: Translations, real_features: torch.Tensor) -> dict:
    """The metrics of module doc from translate_test_set's output and the judge's features of
    the real test faces."""
    changed = done.target != done.source
    hits = done.predicted == done.target
    per_target = {
        emotion: rounded_mean(hits[changed & (done.target == label)])
        for label, emotion in enumerate(EMOTIONS)
    }
    return {
        "target_accuracy": rounded_mean(hits),
        "target_accuracy_changed": rounded_mean(hits[changed]),
        "chance": round(1 / C_DIM, 4),
        "per_target": per_target,  # changed pairs only; None if every test face shows it
        "keep_l1": rounded_mean(done.keep_l1[changed]),
        "cycle_l1": rounded_mean(done.cycle_l1[changed]),
        "identity_l1": rounded_mean(done.keep_l1[~changed]),
        "fid_classifier": round(frechet_distance(real_features, done.features[changed]), 4),
    }


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
    model_dir: Path = DEFAULT_MODEL_DIR,
    classifier_dir: Path = DEFAULT_CLASSIFIER_DIR,
    data_dir: Path = DEFAULT_DATA_DIR,
    metrics_path: Path = DEFAULT_METRICS_PATH,
    confusion_path: Path = DEFAULT_CONFUSION_PATH,
) -> dict:
    """The evaluate stage: writes metrics_path and one `target,predicted` row per translation
    to confusion_path, and logs the metrics (eval/...) and the confusion rows to the training's
    MLflow run. Returns the metrics."""
    cfg = params.evaluate
    device = resolve_device(cfg.device, "evaluate.device")
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    G, config = load_generator(model_dir)
    judge = load_classifier(Path(classifier_dir), device)
    test = load_split(data_dir, "test", device)
    check_images(
        test, config["channels"], config["image_size"], data_dir, f"{model_dir}/config.json"
    )
    inception = None
    if cfg.inception_weights is not None:
        inception = InceptionFid(cfg.inception_weights, device)
        inception.add(test.images, real=True)
    on_changed = None if inception is None else lambda fakes: inception.add(fakes, real=False)
    done = translate_test_set(G.to(device), test, judge, cfg.batch_size, on_changed)
    train = load_split(data_dir, "train", device)
    real_test = _features(judge, test, cfg.batch_size)
    metrics = score_translations(done, real_test) | {
        "fid_classifier_real": round(
            frechet_distance(_features(judge, train, cfg.batch_size), real_test), 4
        ),
        "test_images": len(test.labels),
        "translations": len(done.target),
    }
    if inception is not None:
        metrics["fid_inception"] = round(inception.compute(), 4)
    atomic.write_json(Path(metrics_path), metrics)
    atomic.write_text(
        Path(confusion_path), confusion_csv(done.target, done.predicted, ("target", "predicted"))
    )
    _log_to_training_run(params, model_dir, metrics, Path(confusion_path), config["num_iters"])
    return metrics


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


def _features(judge: torch.nn.Module, data: Dataset, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([embed(judge, x)[0].cpu() for x in data.images.split(batch_size)])


def _log_to_training_run(
    params: Params, model_dir: Path, metrics: dict, confusion_path: Path, step: int
) -> None:
    run_id = json.loads((model_dir / "run.json").read_text(encoding="utf-8"))["mlflow_run_id"]
    if not run_id:
        return
    per_target = {f"eval/target_accuracy/{e}": v for e, v in metrics["per_target"].items()}
    scalars = {f"eval/{k}": v for k, v in metrics.items() if k != "per_target"} | per_target
    run = TrainingRun.attach(params.mlflow, project_root(), run_id)
    run.log_metrics({key: value for key, value in scalars.items() if value is not None}, step)
    run.log_artifact(confusion_path, "eval")
