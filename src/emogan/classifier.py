"""The emotion classifier: the project's judge of translated faces, and the classifier stage.

A small residual CNN that standardizes each image inside the model, so it takes any intensity
range ([0, 1] pixels or the GAN's [-1, 1]), any image size and 1 or 3 channels. Training uses
balanced class weights, a one-cycle learning rate and a fixed number of epochs, all seeded.

`train_classifier` is the stage: it fits on the train split alone, picks the epoch on a
stratified validation share of it, and only then reads the test split to report on it.
"""

import csv
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from emogan import atomic
from emogan.config import ClassifierConfig, Params, project_root
from emogan.data.processed import Dataset, check_images, dataset_hash, load_split
from emogan.device import resolve_device
from emogan.emotions import EMOTIONS
from emogan.progress import STAGE_TIMING, progress_bar, stage_timing
from emogan.tracking import TrainingRun, run_tags

DEFAULT_WIDTH = ClassifierConfig().width
MODEL_FILE, CONFIG_FILE = "classifier.pt", "config.json"


class _Standardize(nn.Module):
    """Zero mean, unit deviation per image: removes overall brightness and contrast."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.mean((1, 2, 3), keepdim=True)
        return (images - mean) / (images.std((1, 2, 3), keepdim=True) + 1e-3)


class _ResidualBlock(nn.Module):
    """Two 3x3 convolutions, the first halving the resolution, plus a 1x1 strided shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def build_classifier(channels: int, width: int = DEFAULT_WIDTH) -> nn.Module:
    """An untrained classifier of channels x H x W images into the 7 emotions (logits)."""
    return nn.Sequential(
        _Standardize(),
        nn.Conv2d(channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        # Downsampling from the first block keeps the cost near a plain 3-layer CNN's.
        _ResidualBlock(width, width),
        _ResidualBlock(width, 2 * width),
        _ResidualBlock(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, len(EMOTIONS)),
    )


@torch.no_grad()
def probabilities(model: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Every image's probability of each emotion (N x 7, on the CPU), computed in batches on
    the model's device; puts the model in eval mode."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([model(x.to(device)).softmax(1) for x in images.split(batch)]).cpu()


def classify(model: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The predicted label of every image (on the CPU); puts the model in eval mode."""
    return probabilities(model, images, batch).argmax(1)


def embed(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of images: the pooled activations before the last layer, as FID's
    Inception features are, and the class logits computed from them."""
    features = model[:-1](images)
    return features, model[-1](features)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of images classified as their label."""
    return (classify(model, images) == labels.cpu()).float().mean().item()


def fit_classifier(data: Dataset, cfg: ClassifierConfig, device: torch.device) -> nn.Module:
    """A classifier trained on all of data for cfg.epochs epochs, in eval mode."""
    return fit_with_validation(data, None, cfg, device).model


@dataclass
class Fit:
    model: nn.Module  # in eval mode, with the weights of best_epoch
    best_epoch: int  # counted from 1; the last one without validation
    val_accuracy: float | None  # of best_epoch; None without validation
    val_curve: list[float]  # validation accuracy after every epoch


def fit_with_validation(
    train: Dataset, val: Dataset | None, cfg: ClassifierConfig, device: torch.device
) -> Fit:
    """Train a classifier on train for cfg.epochs epochs. With val, keep the weights of the
    epoch with the best accuracy on it (the first of equals); else those of the last epoch."""
    model = build_classifier(train.images.size(1), cfg.width).to(device)
    curve: list[float] = []
    best_state = None
    with progress_bar(cfg.epochs, "classifier", "epoch") as bar:
        for _ in _training_epochs(model, train, cfg, device):
            if val is not None:
                curve.append(accuracy(model, val.images, val.labels))
                bar.set_postfix({"val_accuracy": f"{curve[-1]:.3f}"}, refresh=False)
                if curve[-1] > max(curve[:-1], default=-1.0):
                    # A copy in memory: the state dict's tensors are the live, still-training
                    # weights.
                    best_state = {name: value.clone() for name, value in model.state_dict().items()}
            bar.update()
    if best_state is None:
        return Fit(model.eval(), cfg.epochs, None, curve)
    model.load_state_dict(best_state)
    best = curve.index(max(curve))
    return Fit(model.eval(), best + 1, curve[best], curve)


def _training_epochs(
    model: nn.Module, data: Dataset, cfg: ClassifierConfig, device: torch.device
) -> Iterator[int]:
    """Train model in place, yielding the epoch's number after each so the caller can evaluate
    it; every epoch puts the model back in train mode first. The targets are data's soft labels
    (class shares) where it has them, else its labels."""
    torch.manual_seed(cfg.seed)
    images, labels = data.images.to(device), data.labels.to(device)
    soft_labels = None if data.soft_labels is None else data.soft_labels.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = -(-len(images) // cfg.batch_size)
    # Annealing the rate to ~0 settles BatchNorm's running statistics before evaluation.
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, cfg.lr, cfg.epochs * steps_per_epoch)
    weight = _balanced_class_weights(labels)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for batch in torch.randperm(len(images)).to(device).split(cfg.batch_size):
            x = images[batch]
            # Expressions are left-right symmetric: a mirrored face is as good a training face.
            flip = torch.rand(len(x), 1, 1, 1, device=device) < 0.5
            logits = model(torch.where(flip, x.flip(3), x))
            soft = None if soft_labels is None else soft_labels[batch]
            loss = _loss(logits, labels[batch], soft, weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
        yield epoch


def _loss(
    logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor | None, weight: torch.Tensor
) -> torch.Tensor:
    """Class-weighted cross-entropy against the labels, or against the soft labels with each face
    weighted by its label's class weight. (cross_entropy's own weight would scale each class's
    share instead, and a rare class's large weight would turn an angry face's small disgust share
    into its main target.) One-hot soft labels give the labels' loss."""
    if soft is None:
        return nn.functional.cross_entropy(logits, labels, weight=weight)
    per_face = weight[labels]
    loss = nn.functional.cross_entropy(logits, soft, reduction="none")
    return (loss * per_face).sum() / per_face.sum()


def _balanced_class_weights(labels: torch.Tensor) -> torch.Tensor:
    """n / (classes x count) per class, or a rare class (FER2013's disgust) is never predicted."""
    counts = torch.bincount(labels, minlength=len(EMOTIONS)).clamp(min=1).float()
    return len(labels) / (len(EMOTIONS) * counts)


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, validation): round(fraction x count) random images of every class go to
    validation, the rest to fit."""
    generator = torch.Generator().manual_seed(seed)
    fit, val = [], []
    for label in labels.cpu().unique():
        members = (labels.cpu() == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held_out = round(fraction * len(members))
        val.append(members[:held_out])
        fit.append(members[held_out:])
    return torch.cat(fit).sort().values, torch.cat(val).sort().values


def load_classifier(model_dir: Path, device: torch.device) -> nn.Module:
    """The classifier a train_classifier run wrote to model_dir, in eval mode."""
    config = json.loads((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    model = build_classifier(config["channels"], config["width"])
    state = torch.load(Path(model_dir) / MODEL_FILE, map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


def train_classifier(
    params: Params,
    data_dir: Path,
    out_dir: Path,
    metrics_path: Path,
    confusion_path: Path,
) -> dict:
    """The classifier stage. Fits on data_dir's train split less a stratified
    classifier.val_fraction, which picks the epoch; nothing is chosen on the test split, read
    only afterwards to score the result. Writes out_dir (classifier.pt, config.json), the
    scores to metrics_path and one `actual,predicted` row per test image to confusion_path;
    tracks it all in its own MLflow run. Returns the metrics."""
    started = time.perf_counter()
    cfg = params.classifier
    device = resolve_device(cfg.device, "classifier.device")
    data_dir = Path(data_dir)
    data = load_split(data_dir, "train", device)
    check_images(data, params.merge.channels, params.image_size, data_dir, "params.yaml")
    fit_index, val_index = stratified_split(data.labels, cfg.val_fraction, cfg.seed)
    train = data.subset(fit_index)
    val = data.subset(val_index) if len(val_index) else None
    config = {"channels": params.merge.channels, "image_size": params.image_size}
    root, data_hash = project_root(), dataset_hash(data_dir)
    run = TrainingRun.start(
        params.mlflow,
        root,
        run_id=None,
        run_name="classifier",
        params={**cfg.model_dump(), **config},
        tags=run_tags(root, device, os.environ.get("DVC_EXP_NAME"), data_hash, "emogan classifier"),
    )
    run.log_dataset(data_dir, data_hash, "training")
    try:
        start = time.perf_counter()
        fit = fit_with_validation(train, val, cfg, device)
        train_s = time.perf_counter() - start
        test = load_split(data_dir, "test", device)
        predicted = classify(fit.model, test.images)
    except BaseException:
        run.end("FAILED")
        raise
    metrics = _scores(fit, test.labels.cpu(), predicted, train_s) | {
        "epochs": cfg.epochs,
        "train_images": len(train.labels),
        "val_images": len(val_index),
        "test_images": len(test.labels),
    }
    _write_outputs(fit.model, config | {"width": cfg.width}, Path(out_dir))
    metrics |= stage_timing(started)
    atomic.write_json(Path(metrics_path), metrics)
    atomic.write_text(Path(confusion_path), confusion_csv(test.labels.cpu(), predicted))
    _log_run(run, fit, metrics, Path(confusion_path))
    return metrics


def _scores(fit: Fit, actual: torch.Tensor, predicted: torch.Tensor, train_s: float) -> dict:
    recall = {
        emotion: rounded_mean(predicted[actual == label] == label)
        for label, emotion in enumerate(EMOTIONS)
    }
    return {
        "test_accuracy": rounded_mean(predicted == actual),
        "val_accuracy": fit.val_accuracy,
        "recall": recall,  # per emotion on the test split; None for one it lacks
        "best_epoch": fit.best_epoch,
        "train_s": round(train_s, 2),
    }


def rounded_mean(values: torch.Tensor) -> float | None:
    """The mean to 4 decimals (of booleans: the share that is true); None when empty."""
    return round(values.float().mean().item(), 4) if len(values) else None


def confusion_csv(
    actual: torch.Tensor, predicted: torch.Tensor, header: tuple[str, str] = ("actual", "predicted")
) -> str:
    """One row of emotion names per pair, for DVC's confusion plot."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(
        (EMOTIONS[a], EMOTIONS[p]) for a, p in zip(actual.tolist(), predicted.tolist(), strict=True)
    )
    return text.getvalue()


def _write_outputs(model: nn.Module, config: dict[str, int], out_dir: Path) -> None:
    with atomic.atomic_path(out_dir) as work:
        work.mkdir()
        torch.save(model.state_dict(), work / MODEL_FILE)
        (work / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _log_run(run: TrainingRun, fit: Fit, metrics: dict, confusion_path: Path) -> None:
    for epoch, val_accuracy in enumerate(fit.val_curve, start=1):
        run.log_metrics({"val_accuracy_curve": val_accuracy}, step=epoch)
    recall = {f"recall/{emotion}": value for emotion, value in metrics["recall"].items()}
    scalars = {
        key: value for key, value in metrics.items() if key not in ("recall", STAGE_TIMING)
    } | recall
    run.log_metrics({key: value for key, value in scalars.items() if value is not None}, step=0)
    run.log_artifact(confusion_path)
    run.end("FINISHED")
