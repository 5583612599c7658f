"""Collect stage: fetch or copy every listed image, validate it, dedupe it, record provenance.

Layout of `out_dir` (data/raw, a DVC output with `persist: true`, so it survives between runs):

    images/<emotion>/<sha256>.<ext>  sha256 of the bytes as fetched; ext from the decoded format
    manifest.csv                     every input row, in input order, with its outcome
    .journal.jsonl                   one line per validated image, appended as each one lands, so
                                     a re-run, even after a kill, fetches only what is missing

At the end of a run images/, the journal and manifest.csv describe exactly the current input:
files whose entry left the input are pruned.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit
from urllib.request import url2pathname

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from emogan import atomic
from emogan.config import CollectConfig
from emogan.data.fetch import FetchError, fetch_bytes
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("url_or_path", "emotion", "license", "creator", "source", "keyword")
RESULT_COLUMNS = ("sha256", "bytes", "width", "height", "status", "error", "path")

# Formats stored byte-for-byte, with their extension. Anything else Pillow decodes (GIF, ICO,
# PPM, ...) is stored as PNG of its first frame, so OpenCV in later stages reads every file.
_EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tiff",
}
_SAVE_FORMAT = {"MPO": "JPEG"}  # phone cameras write MPO: a JPEG with extra frames appended
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
_UPRIGHT_ORIENTATIONS = (0, 1)  # EXIF 1 is upright; 0 is invalid but common, and means no change
_STORED_NAME = re.compile(r"[0-9a-f]{64}\.[a-z]+")


@dataclass(frozen=True)
class SourceEntry:
    """One input row: a manifest line or a file of a from_dir folder."""

    where: str  # "data/sources/m.csv line 7" or the file's path, for messages
    fields: dict[str, str]  # the input columns as read
    emotion: str
    key: str  # the http(s) URL, or the absolute path of a local file

    @property
    def is_remote(self) -> bool:
        return self.key.startswith(("http://", "https://"))

    @property
    def location(self) -> str:
        return self.fields["url_or_path"]


@dataclass(frozen=True)
class SourceList:
    columns: tuple[str, ...]
    entries: list[SourceEntry]


@dataclass(frozen=True)
class StoredImage:
    """A validated image as recorded in the journal."""

    key: str
    stamp: str  # size and mtime for local files (a changed file is read again); "" for URLs
    sha256: str
    bytes: int
    width: int
    height: int
    ext: str

    @property
    def filename(self) -> str:
        return f"{self.sha256}.{self.ext}"


@dataclass(frozen=True)
class Failure:
    reason: str
    message: str


Outcome = StoredImage | Failure


@dataclass(frozen=True)
class ResultRow:
    entry: SourceEntry
    status: str  # ok, duplicate or failed
    image: StoredImage | None
    reason: str = ""
    message: str = ""

    @property
    def path(self) -> str:
        if self.status != "ok" or self.image is None:
            return ""
        return f"images/{self.entry.emotion}/{self.image.filename}"


@dataclass(frozen=True)
class CollectSummary:
    rows: int
    ok: int
    duplicates: int  # includes emotion_conflicts
    emotion_conflicts: int  # same bytes listed under another emotion than the kept entry's
    failed: int
    fetched: int  # downloads and local reads done by this run
    reused: int  # entries already stored by an earlier run
    pruned: int  # files removed because their entry left the input
    ok_per_emotion: dict[str, int]
    failures: dict[str, int]  # reason -> count
    manifest_path: Path

    def describe(self) -> str:
        failures = ", ".join(f"{reason} {count}" for reason, count in self.failures.items())
        return (
            f"collect: {self.ok} ok, {self.duplicates} duplicate, {self.failed} failed"
            + (f" ({failures})" if failures else "")
            + f"; fetched {self.fetched}, reused {self.reused}, pruned {self.pruned}"
            + f" -> {self.manifest_path}"
        )


@dataclass(frozen=True)
class _Layout:
    images: Path
    staging: Path
    journal: Path
    manifest: Path

    @classmethod
    def of(cls, out_dir: Path) -> _Layout:
        return cls(
            images=out_dir / "images",
            staging=out_dir / ".staging",
            journal=out_dir / ".journal.jsonl",
            manifest=out_dir / "manifest.csv",
        )


class ImageRejected(Exception):
    """Bytes that arrived but are not a usable image."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def collect_images(
    cfg: CollectConfig,
    out_dir: Path,
    metrics_path: Path,
) -> CollectSummary:
    """Run the collect stage; raise EmoganError for a bad input list (before fetching anything)
    or, with cfg.fail_on_error, after writing all outputs when some entries failed."""
    sources = read_sources(cfg)
    layout = _Layout.of(Path(out_dir))
    journal = _load_journal(layout.journal)
    _write_journal(layout.journal, journal.values())  # drops a line torn by a kill
    stored = _index_stored(layout.images)
    outcomes, todo = _plan(sources.entries, journal, stored, cfg)
    reused = len(outcomes)
    _fetch_all(todo, cfg, layout, outcomes, stored)
    rows = _resolve(sources.entries, outcomes)
    pruned = _prune(layout.images, _place(rows, stored, layout.images))
    _write_journal(layout.journal, _current_records(rows))
    _write_manifest(layout.manifest, sources.columns, rows)
    summary = _summarize(rows, fetched=len(todo), reused=reused, pruned=pruned, layout=layout)
    atomic.write_json(Path(metrics_path), _metrics(summary))
    if cfg.fail_on_error and summary.failed:
        raise EmoganError(_failure_line(rows, layout.manifest))
    return summary


# --- input -------------------------------------------------------------------------------------


def read_sources(cfg: CollectConfig) -> SourceList:
    """The entries to collect, from cfg.from_dir when set, else from cfg.manifest."""
    if cfg.from_dir is not None:
        return _read_from_dir(Path(cfg.from_dir))
    assert cfg.manifest is not None  # CollectConfig refuses both being null
    return _read_manifest(Path(cfg.manifest))


def _read_manifest(path: Path) -> SourceList:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: Excel saves CSV with a BOM
    except FileNotFoundError:
        raise EmoganError(f"{path}: manifest not found") from None
    except UnicodeDecodeError:
        raise EmoganError(f"{path}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(reader, [])]
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise EmoganError(
            f"{path}: missing column {missing[0]!r} (need {', '.join(REQUIRED_COLUMNS)})"
        )
    entries = []
    for values in reader:
        if not any(value.strip() for value in values):
            continue
        where = f"{path} line {reader.line_num}"
        if len(values) > len(header):
            raise EmoganError(f"{where}: {len(values)} fields but the header has {len(header)}")
        fields = dict(zip(header, values + [""] * (len(header) - len(values)), strict=True))
        entries.append(_manifest_entry(fields, where, path.parent))
    return SourceList(columns=tuple(header), entries=entries)


def _manifest_entry(fields: dict[str, str], where: str, manifest_dir: Path) -> SourceEntry:
    emotion = _emotion(fields["emotion"], where)
    location = fields["url_or_path"].strip()
    if not location:
        raise EmoganError(f"{where}: empty url_or_path")
    key = _source_key(location, manifest_dir, where)
    return SourceEntry(where=where, fields=fields, emotion=emotion, key=key)


def _emotion(value: str, where: str) -> str:
    emotion = value.strip().lower()
    if emotion not in EMOTIONS:
        raise EmoganError(f"{where}: unknown emotion {value.strip()!r} (use {', '.join(EMOTIONS)})")
    return emotion


def _source_key(location: str, manifest_dir: Path, where: str) -> str:
    parts = urlsplit(location)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return location
    if scheme == "file":
        return str(Path(url2pathname(parts.path)).resolve())
    # A one-letter scheme is a Windows drive ("C:\\photos\\a.jpg"), i.e. a path.
    if len(scheme) > 1:
        raise EmoganError(
            f"{where}: unsupported URL scheme {scheme!r} (use http, https, file:// or a path)"
        )
    # Relative paths are relative to the manifest, so a manifest travels with its photos.
    return str((manifest_dir / location).resolve())


def _read_from_dir(root: Path) -> SourceList:
    if not root.is_dir():
        raise EmoganError(f"collect.from_dir: {root} is not a folder")
    entries = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith("."):
            continue
        if not folder.is_dir():
            log.warning("%s: skipped: files belong in a sub-folder named after an emotion", folder)
            continue
        emotion = folder.name.lower()
        if emotion not in EMOTIONS:
            raise EmoganError(
                f"{folder}: folder name is not an emotion (use {', '.join(EMOTIONS)})"
            )
        entries.extend(_folder_entry(file, emotion, folder.name) for file in _visible_files(folder))
    return SourceList(columns=REQUIRED_COLUMNS, entries=entries)


def _visible_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(folder).parts)
    )


def _folder_entry(file: Path, emotion: str, folder_name: str) -> SourceEntry:
    fields = {
        "url_or_path": str(file),
        "emotion": emotion,
        "license": "",
        "creator": "",
        "source": "local",
        "keyword": folder_name,
    }
    return SourceEntry(where=str(file), fields=fields, emotion=emotion, key=str(file.resolve()))


# --- journal and store -------------------------------------------------------------------------


def _load_journal(path: Path) -> dict[str, StoredImage]:
    records: dict[str, StoredImage] = {}
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = StoredImage(**json.loads(line))
        except (ValueError, TypeError):  # a line cut short by a kill, or from an older layout
            continue
        records[record.key] = record
    return records


def _write_journal(path: Path, records: Iterable[StoredImage]) -> None:
    atomic.write_text(path, "".join(_journal_line(record) for record in records))


def _journal_line(record: StoredImage) -> str:
    return json.dumps(asdict(record), sort_keys=True) + "\n"


def _index_stored(images: Path) -> dict[str, Path]:
    """Stored file name -> where it is now, whichever emotion folder that is."""
    stored: dict[str, Path] = {}
    for path in sorted(images.glob("*/*")):
        if path.is_file() and _STORED_NAME.fullmatch(path.name):
            stored.setdefault(path.name, path)
    return stored


def _stamp(entry: SourceEntry) -> str:
    if entry.is_remote:
        return ""
    try:
        stat = os.stat(entry.key)
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _plan(
    entries: list[SourceEntry],
    journal: dict[str, StoredImage],
    stored: dict[str, Path],
    cfg: CollectConfig,
) -> tuple[dict[str, Outcome], list[tuple[SourceEntry, str]]]:
    """Outcomes already known from the journal, and the (entry, stamp) pairs still to fetch."""
    outcomes: dict[str, Outcome] = {}
    todo: dict[str, tuple[SourceEntry, str]] = {}
    for entry in entries:
        if entry.key in outcomes or entry.key in todo:
            continue
        stamp = _stamp(entry)
        record = journal.get(entry.key)
        # Any stored copy counts: the file may sit in another emotion's folder as the kept twin.
        if record is not None and record.stamp == stamp and record.filename in stored:
            outcomes[entry.key] = _within_limits(record, cfg)
        else:
            todo[entry.key] = (entry, stamp)
    return outcomes, list(todo.values())


def _within_limits(record: StoredImage, cfg: CollectConfig) -> Outcome:
    """Apply today's limits to an image stored under older ones, so the output follows params."""
    if record.bytes > cfg.max_bytes:
        return Failure("too_large", f"{record.bytes} bytes, more than max_bytes {cfg.max_bytes}")
    if record.width * record.height > cfg.max_pixels:
        size = f"{record.width}x{record.height}"
        return Failure("too_many_pixels", f"{size} is more than max_pixels {cfg.max_pixels}")
    return record


# --- fetching ----------------------------------------------------------------------------------


def _fetch_all(
    todo: list[tuple[SourceEntry, str]],
    cfg: CollectConfig,
    layout: _Layout,
    outcomes: dict[str, Outcome],
    stored: dict[str, Path],
) -> None:
    """Fetch `todo` in parallel; journal each stored image as soon as it lands."""
    shutil.rmtree(layout.staging, ignore_errors=True)  # leftovers of a killed run
    if not todo:
        return
    layout.staging.mkdir(parents=True)
    pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="collect")
    try:
        futures: dict[Future[Outcome], SourceEntry] = {
            pool.submit(_acquire, entry, stamp, cfg, layout): entry for entry, stamp in todo
        }
        with (
            layout.journal.open("a", encoding="utf-8") as journal,
            tqdm(total=len(todo), desc="collect", unit="img", disable=None) as bar,
        ):
            for future in as_completed(futures):
                entry = futures[future]
                outcomes[entry.key] = future.result()
                _record(entry, outcomes[entry.key], journal, stored, layout.images)
                bar.update()
    finally:
        # On Ctrl-C, do not start the queued downloads; running ones end within their timeout.
        pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(layout.staging, ignore_errors=True)


def _record(
    entry: SourceEntry, outcome: Outcome, journal: TextIO, stored: dict[str, Path], images: Path
) -> None:
    if isinstance(outcome, Failure):
        log.warning("%s: %s: %s: %s", entry.where, entry.location, outcome.reason, outcome.message)
        return
    stored.setdefault(outcome.filename, images / entry.emotion / outcome.filename)
    journal.write(_journal_line(outcome))
    journal.flush()  # a later kill must not lose it: the point of the journal


def _acquire(entry: SourceEntry, stamp: str, cfg: CollectConfig, layout: _Layout) -> Outcome:
    """Fetch, validate and store one entry (runs in a worker thread)."""
    try:
        original = _read_source(entry, cfg)
        decoded = _decode(original, cfg.max_pixels)
    except (FetchError, ImageRejected) as error:
        return Failure(error.reason, error.message)
    record = StoredImage(
        key=entry.key,
        stamp=stamp,
        sha256=hashlib.sha256(original).hexdigest(),
        bytes=len(original),
        width=decoded.width,
        height=decoded.height,
        ext=decoded.ext,
    )
    target = layout.images / entry.emotion / record.filename
    _store(decoded.payload or original, target, layout.staging)
    return record


def _read_source(entry: SourceEntry, cfg: CollectConfig) -> bytes:
    if entry.is_remote:
        fetched = fetch_bytes(
            entry.key, timeout_s=cfg.timeout_s, max_bytes=cfg.max_bytes, retries=cfg.retries
        )
        return fetched.data
    return _read_local(Path(entry.key), cfg.max_bytes)


def _read_local(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise FetchError("too_large", f"{size} bytes, more than max_bytes {max_bytes}")
        return path.read_bytes()
    except FileNotFoundError:
        raise FetchError("not_found", f"no such file {path}") from None
    except OSError as error:
        raise FetchError("unreadable", f"{path}: {error.strerror or error}") from None


def _store(data: bytes, target: Path, staging: Path) -> None:
    """Write beside images/ and rename into place, so images/ never holds a partial file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp = tempfile.mkstemp(dir=staging, suffix=target.suffix)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# --- validation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Decoded:
    payload: bytes | None  # re-encoded bytes to store, or None to store the original bytes
    ext: str
    width: int
    height: int


def _decode(data: bytes, max_pixels: int) -> _Decoded:
    """Decode fully (so truncated files fail here, not in a later stage) and normalize."""
    # Pillow reports damaged data with many exception types (OSError, SyntaxError, struct.error,
    # EOFError, ...), from the header parser and from the decoders; all mean "corrupt" here.
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:  # Pillow's own, process-wide limit
        raise ImageRejected("too_many_pixels", str(error)) from None
    except UnidentifiedImageError:
        raise ImageRejected("not_image", "not an image format Pillow can read") from None
    except Exception as error:
        raise ImageRejected("corrupt", _first_line(error)) from None
    with image:
        # Image.open reads only the header: refuse huge canvases before allocating them.
        if image.width * image.height > max_pixels:
            raise ImageRejected(
                "too_many_pixels",
                f"{image.width}x{image.height} is more than max_pixels {max_pixels}",
            )
        try:
            image.load()
        except Exception as error:
            raise ImageRejected("corrupt", _first_line(error)) from None
        return _normalized(image)


def _normalized(image: Image.Image) -> _Decoded:
    source_format = image.format or ""
    stored_format = source_format if source_format in _EXTENSIONS else "PNG"
    rotates = image.getexif().get(ExifTags.Base.Orientation, 1) not in _UPRIGHT_ORIENTATIONS
    if rotates:
        image = ImageOps.exif_transpose(image)
    needs_encoding = rotates or stored_format != source_format
    return _Decoded(
        payload=_encoded(image, stored_format) if needs_encoding else None,
        ext=_EXTENSIONS[stored_format],
        width=image.width,
        height=image.height,
    )


def _encoded(image: Image.Image, stored_format: str) -> bytes:
    save_format = _SAVE_FORMAT.get(stored_format, stored_format)
    if save_format == "PNG" and image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    buffer = io.BytesIO()
    image.save(
        buffer,
        format=save_format,
        icc_profile=image.info.get("icc_profile"),
        **_SAVE_OPTIONS.get(save_format, {}),
    )
    return buffer.getvalue()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- dedupe, placement, pruning ----------------------------------------------------------------


def _resolve(entries: list[SourceEntry], outcomes: dict[str, Outcome]) -> list[ResultRow]:
    """One row per entry, in input order; the first entry with given bytes keeps them."""
    kept_by_sha: dict[str, SourceEntry] = {}
    rows = []
    for entry in entries:
        outcome = outcomes[entry.key]
        if isinstance(outcome, Failure):
            rows.append(ResultRow(entry, "failed", None, outcome.reason, outcome.message))
            continue
        kept = kept_by_sha.setdefault(outcome.sha256, entry)
        if kept is entry:
            rows.append(ResultRow(entry, "ok", outcome))
        elif kept.emotion == entry.emotion:
            message = f"same bytes as {kept.location}"
            rows.append(ResultRow(entry, "duplicate", outcome, "duplicate", message))
        else:
            message = f"same bytes as {kept.location}, kept as {kept.emotion}"
            rows.append(ResultRow(entry, "duplicate", outcome, "emotion_conflict", message))
    return rows


def _place(rows: list[ResultRow], stored: dict[str, Path], images: Path) -> set[Path]:
    """Move each kept image into its row's emotion folder; return the paths to keep."""
    keep = set()
    for row in rows:
        if row.status != "ok":
            continue
        target = images / row.path.removeprefix("images/")
        current = stored[row.image.filename]
        if current != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(current, target)
            stored[row.image.filename] = target
        keep.add(target)
    return keep


def _prune(images: Path, keep: set[Path]) -> int:
    """Delete everything under images/ but `keep` (and empty folders); return files removed."""
    removed = 0
    # Reverse order visits a folder's contents before the folder itself.
    for path in sorted(images.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif path not in keep:
            path.unlink()
            removed += 1
    return removed


def _current_records(rows: list[ResultRow]) -> Iterator[StoredImage]:
    seen = set()
    for row in rows:
        if row.image is not None and row.image.key not in seen:
            seen.add(row.image.key)
            yield row.image


# --- outputs -----------------------------------------------------------------------------------


def _write_manifest(path: Path, input_columns: tuple[str, ...], rows: list[ResultRow]) -> None:
    columns = [*input_columns, *(c for c in RESULT_COLUMNS if c not in input_columns)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_manifest_row(row) for row in rows)
    atomic.write_text(path, buffer.getvalue())


def _manifest_row(row: ResultRow) -> dict[str, str | int]:
    image = row.image
    return {
        **row.entry.fields,
        "emotion": row.entry.emotion,
        "sha256": image.sha256 if image else "",
        "bytes": image.bytes if image else "",
        "width": image.width if image else "",
        "height": image.height if image else "",
        "status": row.status,
        "error": f"{row.reason}: {row.message}" if row.reason else "",
        "path": row.path,
    }


def _summarize(
    rows: list[ResultRow], *, fetched: int, reused: int, pruned: int, layout: _Layout
) -> CollectSummary:
    statuses = Counter(row.status for row in rows)
    per_emotion = Counter(row.entry.emotion for row in rows if row.status == "ok")
    failures = Counter(row.reason for row in rows if row.status == "failed")
    return CollectSummary(
        rows=len(rows),
        ok=statuses["ok"],
        duplicates=statuses["duplicate"],
        emotion_conflicts=sum(row.reason == "emotion_conflict" for row in rows),
        failed=statuses["failed"],
        fetched=fetched,
        reused=reused,
        pruned=pruned,
        ok_per_emotion={emotion: per_emotion[emotion] for emotion in EMOTIONS},
        failures=dict(sorted(failures.items())),
        manifest_path=layout.manifest,
    )


def _metrics(summary: CollectSummary) -> dict[str, object]:
    # Only what describes the data: fetched/reused/pruned vary between runs of the same input.
    return {
        "rows": summary.rows,
        "ok": summary.ok,
        "duplicates": summary.duplicates,
        "emotion_conflicts": summary.emotion_conflicts,
        "failed": summary.failed,
        "ok_per_emotion": summary.ok_per_emotion,
        "failures": summary.failures,
    }


def _failure_line(rows: list[ResultRow], manifest: Path) -> str:
    failed = [row for row in rows if row.status == "failed"]
    first = failed[0]
    return (
        f"collect: {len(failed)} of {len(rows)} entries failed (first: {first.entry.where}: "
        f"{first.entry.location}: {first.reason}: {first.message}); see {manifest}"
    )
