"""The merge stage: FER2013 + the reviewed crops -> one image_size dataset split train/test.

Every image is converted as the thesis did (OpenCV resize, then cvtColor to gray, or kept RGB
with `merge.channels: 3`) and written as `<split>/<emotion>/<name>.png` with an `index.csv`.
FER2013 keeps its own split (Usage); its labels are first replaced, or its faces dropped, per
the FER+ votes (fer2013.ferplus_mode, data/ferplus.py). A reviewed crop goes to test when a hash
of its crop_id falls below custom_test_fraction: the split of a crop depends on nothing else, so
adding crops never moves existing ones between train and test. Near-duplicate faces
(emogan.data.duplicates) are listed in duplicates.csv and, per merge.duplicates, left out.
"""

import csv
import hashlib
import io
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from emogan import atomic
from emogan.config import Fer2013Config, MergeConfig
from emogan.data.csv_rows import csv_rows
from emogan.data.duplicates import (
    DUPLICATE_COLUMNS,
    DuplicateGroups,
    dropped_faces,
    group_near_duplicates,
)
from emogan.data.fer2013 import FerImages, read_fer2013
from emogan.data.ferplus import FerPlusLabels, ferplus_labels, ferplus_metrics
from emogan.data.images import read_rgb
from emogan.emotions import EMOTIONS, LABEL_OF
from emogan.errors import EmoganError

INDEX_COLUMNS = ("path", "label", "emotion", "source", "split", "origin")
# Written only when the classifier is to train on soft labels (ferplus_mode probability): each
# image's share per emotion; custom crops and FER rows without shares are one-hot.
SOFT_LABELS_FILE = "soft_labels.csv"
SOFT_LABEL_COLUMNS = ("path", *EMOTIONS)
DUPLICATES_CSV = "duplicates.csv"
REVIEWED_COLUMNS = ("crop_id", "path", "emotion", "label")  # the columns merge reads
SPLITS = ("train", "test")
SOURCES = ("fer2013", "custom")
# cv2 releases the GIL while it decodes, resizes and encodes, so threads beat the core count.
WRITE_THREADS = min(16, 4 * (os.cpu_count() or 1))
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Sample:
    """One image of the merged dataset."""

    path: str  # relative to the output folder: <split>/<emotion>/<name>.png
    label: int
    source: str  # fer2013 | custom
    split: str  # train | test
    origin: str  # fer2013:line:17, fer2013:train/happy/x.png, or the crop_id
    image: np.ndarray | Path  # gray H x W pixels, or an RGB crop file read when it is written
    shares: tuple[float, ...] | None = None  # FER+ vote share per emotion (probability mode)

    @property
    def emotion(self) -> str:
        return EMOTIONS[self.label]


def merge_dataset(
    fer: Fer2013Config,
    cfg: MergeConfig,
    image_size: int,
    reviewed_dir: Path,
    out_dir: Path,
    metrics_path: Path,
) -> dict:
    """Write out_dir (images + index.csv, replaced as a whole) and the class counts to
    metrics_path; return the counts. On bad input out_dir is left as it was."""
    fer_faces = fer2013_samples(fer)
    samples = list(fer_faces.samples)
    if cfg.include_custom:
        samples += _custom_samples(Path(reviewed_dir), cfg.custom_test_fraction)
    samples.sort(key=lambda sample: sample.path)
    images, grays = _convert_all(samples, image_size, cfg.channels)
    groups = group_near_duplicates(grays, cfg.duplicate_similarity)
    splits, sources = [s.split for s in samples], [s.source for s in samples]
    dropped = dropped_faces(groups, splits, sources, cfg.duplicates, cfg.duplicate_max_group)
    kept = [i for i in range(len(samples)) if i not in dropped]
    with atomic.atomic_path(Path(out_dir)) as work:
        written = [samples[i] for i in kept]
        _write_images(written, [images[i] for i in kept], work)
        (work / "index.csv").write_text(_index_csv(written), encoding="utf-8")
        if any(sample.shares is not None for sample in written):
            (work / SOFT_LABELS_FILE).write_text(_soft_labels_csv(written), encoding="utf-8")
        (work / DUPLICATES_CSV).write_text(
            _duplicates_csv(samples, groups, dropped, cfg.duplicate_max_group), encoding="utf-8"
        )
    metrics = _metrics(written, fer_faces.skipped, image_size, cfg.channels) | {
        "ferplus": fer_faces.ferplus,
        "duplicates": _duplicate_metrics(samples, groups, dropped, cfg),
    }
    atomic.write_json(Path(metrics_path), metrics)
    return metrics


@dataclass(frozen=True)
class FerSamples:
    """FER2013's faces as merge files them, after FER+ (fer2013.ferplus_mode)."""

    samples: list[Sample]
    skipped: int  # rows whose Usage is in neither train_usage nor test_usage
    ferplus: dict  # what FER+ relabelled and dropped, per FER2013 class (metrics/dataset.json)


def fer2013_samples(fer: Fer2013Config) -> FerSamples:
    """FER2013's faces with the labels merge files them under. The crop judge trains on these
    too: one reader, so both see the same labels."""
    fer_images = read_fer2013(fer)
    ferplus = ferplus_labels(fer, fer_images)
    return FerSamples(
        samples=_fer_samples(fer_images, ferplus),
        skipped=fer_images.skipped,
        ferplus=ferplus_metrics(fer.ferplus_mode, fer_images.labels, ferplus),
    )


def _fer_samples(fer: FerImages, ferplus: FerPlusLabels) -> list[Sample]:
    """One sample per FER2013 row FER+ keeps, in the label it gives."""
    shares = [None] * len(fer.labels) if ferplus.shares is None else ferplus.shares.tolist()
    return [
        Sample(
            path=f"{split}/{EMOTIONS[label]}/{name}.png",
            label=label,
            source="fer2013",
            split=split,
            origin=origin,
            image=image,
            shares=None if row_shares is None else tuple(row_shares),
        )
        for image, label, split, name, origin, row_shares in zip(
            fer.images,
            ferplus.labels.tolist(),
            fer.splits,
            fer.names,
            fer.origins,
            shares,
            strict=True,
        )
        if label >= 0
    ]


def _custom_samples(reviewed_dir: Path, test_fraction: float) -> list[Sample]:
    """One sample per row of reviewed.csv, in the emotion the review gave it."""
    index_path = reviewed_dir / "reviewed.csv"
    if not index_path.is_file():
        raise EmoganError(
            f"{index_path}: not found (run the review stage, or set merge.include_custom: false)"
        )
    samples: dict[str, Sample] = {}
    for row, where in csv_rows(index_path, REVIEWED_COLUMNS):
        sample = _custom_sample(row, reviewed_dir, test_fraction, where)
        if sample.origin in samples:
            raise EmoganError(f"{where}: crop_id {sample.origin} appears twice")
        samples[sample.origin] = sample
    return list(samples.values())


def _custom_sample(
    row: dict[str, str | None], reviewed_dir: Path, test_fraction: float, where: str
) -> Sample:
    crop_id, path, emotion, label = ((row.get(c) or "").strip() for c in REVIEWED_COLUMNS)
    if not _SAFE_ID.fullmatch(crop_id):
        raise EmoganError(f"{where}: crop_id {crop_id!r} is not a plain file-name-safe id")
    if emotion not in LABEL_OF:
        raise EmoganError(f"{where}: emotion {emotion!r} is not one of {', '.join(EMOTIONS)}")
    if label != str(LABEL_OF[emotion]):
        raise EmoganError(f"{where}: label {label!r} does not match emotion {emotion!r}")
    image_path = reviewed_dir / path
    if not path or not image_path.is_file():
        raise EmoganError(f"{where}: {image_path} not found")
    split = custom_split(crop_id, test_fraction)
    return Sample(
        path=f"{split}/{emotion}/custom-{crop_id}.png",
        label=LABEL_OF[emotion],
        source="custom",
        split=split,
        origin=crop_id,
        image=image_path,
    )


def custom_split(crop_id: str, test_fraction: float) -> str:
    """The split of one crop: test for about test_fraction of all ids, decided by the id alone."""
    digest = hashlib.sha256(crop_id.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "test" if position < test_fraction else "train"


def convert(pixels: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """Gray (H x W) or RGB (H x W x 3) pixels -> image_size square, gray or RGB, as the thesis
    did: resize first, then cvtColor."""
    resized = resize_square(pixels, image_size)
    if channels == 1 and resized.ndim == 3:
        return cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY)
    if channels == 3 and resized.ndim == 2:
        return cv2.cvtColor(resized, cv2.COLOR_GRAY2RGB)
    return resized


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    if height == width == size:
        return pixels
    # AREA averages all the source pixels behind each output pixel, the alias-free way to
    # shrink; when enlarging it repeats pixels in blocks (like NEAREST), so CUBIC does that.
    interpolation = cv2.INTER_AREA if max(height, width) > size else cv2.INTER_CUBIC
    return cv2.resize(pixels, (size, size), interpolation=interpolation)


def _convert_all(
    samples: list[Sample], image_size: int, channels: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each sample as merge writes it, and as a gray face of that size, so that near-duplicates
    of a crop and a FER2013 face are looked for as the models see them."""
    convert_one = partial(sample_pixels, image_size=image_size, channels=channels)
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        done = pool.map(convert_one, [sample.image for sample in samples])
        images = list(tqdm(done, total=len(samples), desc="convert", unit="image", disable=None))
    grays = [i if i.ndim == 2 else cv2.cvtColor(i, cv2.COLOR_RGB2GRAY) for i in images]
    return images, grays


def _write_images(samples: list[Sample], images: list[np.ndarray], root: Path) -> None:
    for split in SPLITS:
        for emotion in EMOTIONS:
            (root / split / emotion).mkdir(parents=True)
    write = partial(_write_image, root=root)
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        done = pool.map(write, samples, images)
        for _ in tqdm(done, total=len(samples), desc="merge", unit="image", disable=None):
            pass


def sample_pixels(image: np.ndarray | Path, image_size: int, channels: int) -> np.ndarray:
    """A sample's image (pixels, or a crop file) as merge writes it: image_size, gray or RGB."""
    pixels = read_rgb(image) if isinstance(image, Path) else image
    return convert(pixels, image_size, channels)


def _write_image(sample: Sample, image: np.ndarray, root: Path) -> None:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # cv2 encodes colour as BGR
    _, png = cv2.imencode(".png", image)
    (root / sample.path).write_bytes(png.tobytes())


def _index_csv(samples: list[Sample]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    for s in samples:
        writer.writerow((s.path, s.label, s.emotion, s.source, s.split, s.origin))
    return text.getvalue()


def _soft_labels_csv(samples: list[Sample]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(SOFT_LABEL_COLUMNS)
    for s in samples:
        shares = s.shares or tuple(float(label == s.label) for label in range(len(EMOTIONS)))
        writer.writerow((s.path, *(f"{share:.6g}" for share in shares)))
    return text.getvalue()


def _duplicates_csv(
    samples: list[Sample], groups: DuplicateGroups, dropped: set[int], max_group: int
) -> str:
    """One row per face in a group of near-duplicates, with its highest similarity to another."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(DUPLICATE_COLUMNS)
    for number, members in enumerate(groups.members, start=1):
        crowd = int(len(members) > max_group)
        for i in members:
            s = samples[i]
            similarity = f"{groups.similarity[i]:.4f}"
            writer.writerow((number, s.path, s.source, s.split, s.origin, similarity, crowd,
                             int(i in dropped)))  # fmt: skip
    return text.getvalue()


def _duplicate_metrics(
    samples: list[Sample], groups: DuplicateGroups, dropped: set[int], cfg: MergeConfig
) -> dict:
    """Groups (crowds apart) by what they span, and the faces left out per split and source;
    every key always present."""
    copies = [g for g in groups.members if len(g) <= cfg.duplicate_max_group]
    spans = [({samples[i].split for i in g}, {samples[i].source for i in g}) for g in copies]
    left_out = Counter((samples[i].split, samples[i].source) for i in dropped)
    return {
        "groups": len(copies),
        "faces_in_groups": sum(len(g) for g in copies),
        "crowds": len(groups.members) - len(copies),
        "faces_in_crowds": sum(len(g) for g in groups.members) - sum(len(g) for g in copies),
        "groups_within_one_split": sum(len(splits) == 1 for splits, _ in spans),
        "groups_across_splits": sum(len(splits) > 1 for splits, _ in spans),
        "groups_across_sources": sum(len(sources) > 1 for _, sources in spans),
        "dropped": {
            split: {source: left_out[split, source] for source in SOURCES}
            | {"total": sum(left_out[split, source] for source in SOURCES)}
            for split in SPLITS
        }
        | {"total": len(dropped)},
    }


def _metrics(samples: list[Sample], fer_skipped: int, image_size: int, channels: int) -> dict:
    """{split: {source: {emotion: n, total: n}}}, with "all" as a split and as a source; every
    key is always present, so `dvc metrics show` and `dvc exp show` line runs up column by
    column."""
    counts = Counter((s.split, s.source, s.emotion) for s in samples)
    split_groups = {split: (split,) for split in SPLITS} | {"all": SPLITS}
    source_groups = {source: (source,) for source in SOURCES} | {"all": SOURCES}

    def class_counts(splits: tuple[str, ...], sources: tuple[str, ...]) -> dict[str, int]:
        by_emotion = {
            emotion: sum(counts[split, source, emotion] for split in splits for source in sources)
            for emotion in EMOTIONS
        }
        return by_emotion | {"total": sum(by_emotion.values())}

    return {
        "image_size": image_size,
        "channels": channels,
        "fer2013_skipped": fer_skipped,
        **{
            split_name: {
                source_name: class_counts(splits, sources)
                for source_name, sources in source_groups.items()
            }
            for split_name, splits in split_groups.items()
        },
    }
