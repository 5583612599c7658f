"""The crop_judge stage: a judge that never saw a crop scores every crop for the review queue.

The project's classifier (emogan.classifier, with the classifier section's settings but
crop_judge.epochs) trained on FER2013's training faces alone, converted as merge converts them,
scores every crop after the same conversion. It reads the crops and FER2013, never
data/processed: the review decisions it helps make are part of that.
"""

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from emogan import atomic
from emogan.classifier import classify, fit_classifier, probabilities, rounded_mean
from emogan.config import Params
from emogan.data.crop import read_crops
from emogan.data.crop_scores import CropScore, write_crop_scores
from emogan.data.merge import SOURCES, fer2013_samples, sample_pixels
from emogan.data.processed import Dataset, from_pixels
from emogan.device import resolve_device
from emogan.progress import stage_timing


def judge_crops(params: Params, crops_dir: Path, scores_path: Path, metrics_path: Path) -> dict:
    """Train the judge on FER2013's train split, score it on the test split, write every
    crop's scores to scores_path and the metrics to metrics_path; return the metrics."""
    started = time.perf_counter()
    device = resolve_device(params.classifier.device, "classifier.device")
    samples = fer2013_samples(params.fer2013).samples
    fer = Dataset(
        _tensor([s.image for s in samples], params).to(device),
        torch.tensor([s.label for s in samples], device=device),
        torch.full((len(samples),), SOURCES.index("fer2013"), device=device),
    )
    in_train = torch.tensor([s.split == "train" for s in samples], device=device)
    cfg = params.classifier.model_copy(update={"epochs": params.crop_judge.epochs})
    start = time.perf_counter()
    model = fit_classifier(fer.subset(in_train), cfg, device)
    train_s = time.perf_counter() - start
    test = fer.subset(~in_train)

    crops = read_crops(crops_dir)
    crop_images = _tensor([Path(crops_dir) / crop.path for crop in crops], params)
    probs = probabilities(model, crop_images).tolist() if crops else []
    scores = [CropScore(c.crop_id, c.emotion, tuple(p)) for c, p in zip(crops, probs, strict=True)]
    write_crop_scores(Path(scores_path), scores)
    agreeing = sum(score.guess == score.emotion for score in scores)
    metrics = {
        "fer_test_accuracy": rounded_mean(classify(model, test.images) == test.labels.cpu()),
        "fer_train_images": len(samples) - len(test.labels),
        "fer_test_images": len(test.labels),
        "epochs": cfg.epochs,
        "train_s": round(train_s, 2),
        "crops_scored": len(scores),
        # the share of crops whose folder emotion is the judge's guess
        "crops_agreeing": round(agreeing / len(scores), 4) if scores else None,
    } | stage_timing(started)
    atomic.write_json(Path(metrics_path), metrics)
    return metrics


def _tensor(images: Sequence[np.ndarray | Path], params: Params) -> torch.Tensor:
    """N x C x H x W in [-1, 1], each image converted as merge writes it."""
    size, channels = params.image_size, params.merge.channels
    if not images:
        return torch.empty(0, channels, size, size)
    pixels = np.stack([sample_pixels(image, size, channels) for image in images])
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    return from_pixels(torch.from_numpy(pixels).permute(0, 3, 1, 2))
