"""The record files people and stages write by hand or by CSV (decisions, reviewed crops, crop
scores) read one way: the header checked for the columns the reader needs, then each row with
where it is, so that a bad row's error names its file and line."""

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from emogan.errors import EmoganError


def csv_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[dict[str, str | None], str]]:
    """Each row of path as a dict, with "<path> line N"; EmoganError when the header lacks one of
    columns. A missing file raises FileNotFoundError: its caller knows what the absence means."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in columns if column not in (reader.fieldnames or [])]
        if missing:
            raise EmoganError(f"{path} line 1: missing column {missing[0]!r}")
        for row in reader:
            yield row, f"{path} line {reader.line_num}"
