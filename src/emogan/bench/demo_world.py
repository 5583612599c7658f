"""Benchmark of the demo world: is it fast to make, do MTCNN and a classifier see what we drew?

Three numbers make the demo trustworthy as a stand-in for real data: generation time, MTCNN's
recall against the ground-truth faces (with its false positives), and the test accuracy of the
emotion classifier trained on the demo's FER2013-format faces (the world must be learnable).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from emogan.classifier import accuracy, fit_classifier
from emogan.config import ClassifierConfig, DemoConfig, Fer2013Config
from emogan.data.demo import make_demo
from emogan.data.detect import DetectedFace, detect_faces, load_detector
from emogan.data.fer2013 import read_fer2013
from emogan.data.merge import SOURCES
from emogan.data.processed import Dataset
from emogan.data.simulated_review import box_iou

MIN_PROB = 0.9  # detections below this are ignored, as the crop stage would
MIN_IOU = 0.4  # a detection this close to a ground-truth box found that face
DETECT_BATCH = 8
EPOCHS = ClassifierConfig().epochs


def match_faces(
    truth: list[tuple[float, ...]], found: list[DetectedFace]
) -> tuple[dict[int, float], int]:
    """Greedy matching, most probable detection first, each to the free truth box it overlaps
    most (IoU >= MIN_IOU). Returns {truth index: matched prob} and the number of false positives."""
    matched: dict[int, float] = {}
    false_positives = 0
    for face in sorted(found, key=lambda f: -f.prob):
        if face.prob < MIN_PROB:
            continue
        overlaps = [(box_iou(face.box, box), i) for i, box in enumerate(truth) if i not in matched]
        best_iou, best = max(overlaps, default=(0.0, -1))
        if best_iou >= MIN_IOU:
            matched[best] = face.prob
        else:
            false_positives += 1
    return matched, false_positives


def detection_scores(demo_dir: Path, device: str = "cpu") -> dict[str, float | None]:
    """MTCNN over every photo in the demo's manifest, scored against ground_truth.csv.

    A ground-truth face is found when a detection with prob >= MIN_PROB overlaps it with
    IoU >= MIN_IOU; any other such detection is a false positive.
    """
    photos = pd.read_csv(demo_dir / "manifest.csv")["url_or_path"].tolist()
    truth = pd.read_csv(demo_dir / "ground_truth.csv")
    detector = load_detector(device)
    hits, probs, false_positives = [], [], 0
    for start in tqdm(range(0, len(photos), DETECT_BATCH), desc="bench mtcnn", disable=None):
        batch = photos[start : start + DETECT_BATCH]
        images = [cv2.cvtColor(cv2.imread(str(demo_dir / p)), cv2.COLOR_BGR2RGB) for p in batch]
        for photo, found in zip(batch, detect_faces(detector, images), strict=True):
            faces = truth[truth["photo"] == photo]
            boxes = list(faces[["x1", "y1", "x2", "y2"]].itertuples(index=False, name=None))
            matched, extra = match_faces(boxes, found)
            hits += [(i in matched, occluded) for i, occluded in enumerate(faces["occluded"])]
            probs += matched.values()
            false_positives += extra
    detected = np.array([hit for hit, _ in hits], bool)
    occluded = np.array([occ for _, occ in hits], bool)
    return {
        "faces": len(hits),
        "recall": _mean(detected),
        "recall_occluded": _mean(detected[occluded]),
        "recall_unoccluded": _mean(detected[~occluded]),
        "false_positives_per_photo": false_positives / len(photos),
        "mean_prob": _mean(np.array(probs)),
    }


def _mean(values: np.ndarray) -> float | None:
    """The mean, or None (null in JSON) when there is nothing to average."""
    return float(values.mean()) if values.size else None


def train_judge(data: Dataset, seed: int = 0, epochs: int = EPOCHS) -> nn.Module:
    """The project's emotion classifier (emogan.classifier) trained on data with classifier's
    default settings, on the images' device, in eval mode."""
    cfg = ClassifierConfig(seed=seed, epochs=epochs)
    return fit_classifier(data, cfg, data.images.device)


def classifier_scores(fer_csv: Path, seed: int = 0, epochs: int = EPOCHS) -> dict[str, float]:
    """Train the emotion classifier on the Training rows; report its accuracy on PublicTest +
    PrivateTest.

    Nothing is chosen on the test rows (fixed epochs and schedule, no early stopping), so the
    accuracy is an honest measure of how learnable the faces are.
    """
    fer = read_fer2013(Fer2013Config(path=Path(fer_csv)))  # Training vs PublicTest+PrivateTest
    images = torch.from_numpy(np.stack(fer.images)[:, None]).float() / 255
    labels = torch.from_numpy(fer.labels)
    train = torch.tensor([split == "train" for split in fer.splits])
    start = time.perf_counter()
    sources = torch.full_like(labels, SOURCES.index("fer2013"))
    model = train_judge(Dataset(images, labels, sources).subset(train), seed, epochs)
    train_s = time.perf_counter() - start
    return {
        "classifier_test_accuracy": accuracy(model, images[~train], labels[~train]),
        "classifier_train_s": round(train_s, 2),
    }


def bench_demo_world(cfg: DemoConfig, work_dir: Path) -> dict:
    """Generate the demo into work_dir/demo and measure it (see the module docstring)."""
    demo_dir = Path(work_dir) / "demo"
    start = time.perf_counter()
    make_demo(cfg, demo_dir)
    generate_s = time.perf_counter() - start
    return {
        "generate_s": round(generate_s, 2),
        **detection_scores(demo_dir),
        **classifier_scores(demo_dir / "fer2013.csv", seed=cfg.seed),
    }
