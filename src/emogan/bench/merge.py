"""Benchmark of the merge stage on a full-size FER2013 CSV (35,887 rows, ~290 MB) and its FER+
votes file.

The CSV is synthetic (smooth random images) but has FER2013's real class counts, usage split,
row order and file size, which is all the parser and writer care about; the votes are drawn as
the demo world's are. Some rows are planted near-duplicates of others (emogan.data.planted), so
the merge's duplicate detection is measured at full size too.
"""

import time
from pathlib import Path

import cv2
import numpy as np

from emogan.bench.duplicates import merged_origins, recall_precision
from emogan.config import Fer2013Config, MergeConfig
from emogan.data.demo import FERPLUS_FILE, ferplus_line, ferplus_votes
from emogan.data.fer2013 import FER2013_COUNTS, FER_SIZE, USAGES, read_fer2013
from emogan.data.ferplus import HEADER, read_votes
from emogan.data.merge import DUPLICATES_CSV, merge_dataset
from emogan.data.planted import ALTERATIONS, alter

FER2013_ROWS = sum(sum(counts) for counts in FER2013_COUNTS.values())  # 35,887
CHUNK_ROWS = 4096
COARSE = 6  # random values on a 6x6 grid, enlarged to 48x48: smooth blobs, not pure noise
PLANTED_SHARE = 0.02  # of the rows: near-duplicates of another row
FIRST_LINE = 2  # CSV line of the first row, after the header


def bench_merge(work_dir: Path, rows: int = FER2013_ROWS, seed: int = 0) -> dict:
    """Write work_dir/fer2013.csv and its FER+ votes, then time reading each alone and the
    whole merge stage (FER+ majority, the default)."""
    work_dir = Path(work_dir)
    csv_path, votes_path = work_dir / "fer2013.csv", work_dir / FERPLUS_FILE
    planted = write_fer2013_csv(csv_path, rows, seed, votes_path)
    fer = Fer2013Config(path=csv_path, ferplus=votes_path)
    start = time.perf_counter()
    read_fer2013(fer)
    parse_s = time.perf_counter() - start
    start = time.perf_counter()
    read_votes(votes_path, csv_path, rows)
    votes_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = merge_dataset(
        fer,
        MergeConfig(include_custom=False),
        image_size=FER_SIZE,
        reviewed_dir=work_dir / "reviewed",
        out_dir=work_dir / "processed",
        metrics_path=work_dir / "dataset.json",
    )
    total_s = time.perf_counter() - start
    # FER+ drops some faces before the merge can see them: their pairs cannot be found.
    merged = merged_origins(work_dir / "processed")
    planted = {pair for pair in planted if pair <= merged}
    found = recall_precision(work_dir / "processed" / DUPLICATES_CSV, planted)
    return {
        "rows": rows,
        "csv_mb": round(csv_path.stat().st_size / 1e6, 1),
        "parse_s": round(parse_s, 2),
        "ferplus_parse_s": round(votes_s, 3),
        "total_s": round(total_s, 2),
        "images_written": metrics["all"]["all"]["total"],
        "duplicates": found | {"dropped": metrics["duplicates"]["dropped"]["total"]},
    }


def write_fer2013_csv(path: Path, rows: int, seed: int, votes_path: Path) -> set[frozenset[str]]:
    """A Kaggle-format CSV of `rows` rows spread evenly over FER2013's real row list, a
    PLANTED_SHARE of them near-duplicates of another row, and its FER+ votes at votes_path;
    return the planted pairs of origins (fer2013:line:N)."""
    labels, usages = _fer2013_row_list(seed)
    picked = np.arange(rows) * len(labels) // rows
    rng, votes_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    faces = _smooth_faces(rng, rows)
    copies = rng.permutation(rows)[: int(rows * PLANTED_SHARE) * 2].reshape(-1, 2)
    for k, (source, copy) in enumerate(copies.tolist()):
        faces[copy] = alter(faces[source], ALTERATIONS[k % len(ALTERATIONS)], rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(b"emotion,pixels,Usage\n")
        for start in range(0, rows, CHUNK_ROWS):
            chunk = picked[start : start + CHUNK_ROWS]
            texts = _pixel_texts(faces[start : start + CHUNK_ROWS])
            handle.writelines(
                b"%d,%s,%s\n" % (labels[i], text, usages[i].encode())
                for i, text in zip(chunk.tolist(), texts, strict=True)
            )
    vote_lines = [ferplus_line(usages[i], row, ferplus_votes(votes_rng, labels[i]))
                  for row, i in enumerate(picked.tolist())]  # fmt: skip
    votes_path.write_text("\n".join([",".join(HEADER), *vote_lines]) + "\n", encoding="utf-8")
    return {frozenset(f"fer2013:line:{row + FIRST_LINE}" for row in pair) for pair in copies}


def _fer2013_row_list(seed: int) -> tuple[np.ndarray, list[str]]:
    """All 35,887 (label, usage) pairs: usages in file order, labels shuffled within each."""
    rng = np.random.default_rng(seed)
    labels, usages = [], []
    for usage in USAGES:
        counts = FER2013_COUNTS[usage]
        labels.append(rng.permutation(np.repeat(np.arange(len(counts)), counts)))
        usages += [usage] * sum(counts)
    return np.concatenate(labels), usages


def _smooth_faces(rng: np.random.Generator, count: int) -> np.ndarray:
    coarse = rng.integers(0, 256, (count, COARSE, COARSE), dtype=np.uint8)
    return np.stack(
        [cv2.resize(c, (FER_SIZE, FER_SIZE), interpolation=cv2.INTER_CUBIC) for c in coarse]
    )


def _digit_table() -> tuple[np.ndarray, np.ndarray]:
    """b"v " for every value 0-255, left-aligned in 4 bytes, and its width."""
    texts = [b"%d " % value for value in range(256)]
    table = np.zeros((256, 4), np.uint8)
    for value, text in enumerate(texts):
        table[value, : len(text)] = np.frombuffer(text, np.uint8)
    return table, np.array([len(text) for text in texts])


_DIGITS, _WIDTHS = _digit_table()


def _pixel_texts(images: np.ndarray) -> list[bytes]:
    """Each image as b"v v v ...", built by table look-up: str() per value is far slower."""
    flat = images.reshape(len(images), -1)
    widths = _WIDTHS[flat]
    chars = _DIGITS[flat][np.arange(4) < widths[..., None]].tobytes()
    ends = np.cumsum(widths.sum(axis=1))
    starts = ends - widths.sum(axis=1)
    return [chars[s : e - 1] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
