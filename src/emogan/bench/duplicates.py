"""Recall and precision of the merge stage's near-duplicate groups (data/processed/
duplicates.csv) against the demo world's planted near-duplicates (planted_duplicates.csv)."""

import csv
from collections import Counter
from itertools import combinations
from pathlib import Path

from emogan.data.demo import PLANTED_CSV
from emogan.data.merge import DUPLICATES_CSV
from emogan.data.simulated_review import drawn_face_of_crops

EXAMPLES = 10  # unplanted detected pairs listed, for a look at what they are


def bench_duplicates(demo_dir: Path, raw_dir: Path, crops_dir: Path, processed_dir: Path) -> dict:
    """Planted pairs count when both faces reached the merge (a custom copy needs MTCNN to find
    it and the review to keep it); recall and precision per recall_precision."""
    origin_of_face = {
        face: crop for crop, face in drawn_face_of_crops(demo_dir, raw_dir, crops_dir).items()
    }
    merged = merged_origins(processed_dir)
    planted: dict[frozenset[str], str] = {}
    listed = 0
    with (Path(demo_dir) / PLANTED_CSV).open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            listed += 1
            pair = [origin_of_face.get(row[k], row[k]) for k in ("copy", "original")]
            if all(origin in merged for origin in pair):
                planted[frozenset(pair)] = row["alteration"]
    found = recall_precision(Path(processed_dir) / DUPLICATES_CSV, set(planted))
    groups = _groups(Path(processed_dir) / DUPLICATES_CSV)
    together = {frozenset(p) for g in groups.values() for p in combinations(g, 2)}
    by_alteration = Counter(planted.values())
    hits = Counter(alteration for pair, alteration in planted.items() if pair in together)
    unplanted = sorted(sorted(pair) for pair in together - set(planted))
    return found | {
        "planted_listed": listed,
        "recall_by_alteration": {
            a: round(hits[a] / n, 4) for a, n in sorted(by_alteration.items())
        },
        "missed": sorted(sorted(pair) for pair in set(planted) - together),
        "unplanted_examples": unplanted[:EXAMPLES],
    }


def merged_origins(processed_dir: Path) -> set[str]:
    """The origin of every face the merge had, those it left out as duplicates included."""
    merged = _column(Path(processed_dir) / "index.csv", "origin")
    return merged | _column(Path(processed_dir) / DUPLICATES_CSV, "origin")


def recall_precision(duplicates_csv: Path, planted: set[frozenset[str]]) -> dict[str, float | int]:
    """Recall: planted pairs whose two faces share a group (not a crowd, which merge never drops
    from). Precision: of all pairs within a group, the planted ones."""
    detected = {frozenset(p) for g in _groups(duplicates_csv).values() for p in combinations(g, 2)}
    hits = len(detected & planted)
    return {
        "planted_pairs": len(planted),
        "detected_pairs": len(detected),
        "recall": round(hits / len(planted), 4) if planted else 1.0,
        "precision": round(hits / len(detected), 4) if detected else 1.0,
    }


def _groups(duplicates_csv: Path) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    with duplicates_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["crowd"] == "0":  # a crowd of look-alikes is not a group of copies
                groups.setdefault(row["group"], []).append(row["origin"])
    return groups


def _column(path: Path, column: str) -> set[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row[column] for row in csv.DictReader(handle)}
