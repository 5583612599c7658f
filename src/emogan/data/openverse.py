"""`emogan collect search`: find openly licensed photos for each emotion keyword on Openverse.

The thesis collected photos by typing keywords ("angry man", "furious woman", ...) into a photo
site. This does the same through the Openverse image API (no key needed) and writes the hits as
a collect manifest, with licence and creator for attribution, ready for review and `collect`.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tqdm import tqdm

from emogan import atomic
from emogan.config import CollectConfig, SearchConfig
from emogan.data.collect import REQUIRED_COLUMNS
from emogan.data.fetch import FetchError, fetch_json
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError

OUTPUT_COLUMNS = (*REQUIRED_COLUMNS, "title", "landing_url", "openverse_id")


@dataclass(frozen=True)
class Query:
    emotion: str
    text: str


@dataclass(frozen=True)
class SearchSummary:
    queries: int
    requests: int
    rows: int
    duplicates: int  # the same image again for the same emotion
    conflicts: int  # an image already kept for another emotion
    rows_per_emotion: dict[str, int]
    out: Path

    def describe(self) -> str:
        return (
            f"search: {self.rows} images from {self.queries} queries ({self.requests} requests, "
            f"{self.duplicates} duplicate, {self.conflicts} emotion conflicts) -> {self.out}"
        )


@dataclass
class _Search:
    """Results so far, deduplicated by Openverse id and by image URL."""

    rows: list[dict[str, str]] = field(default_factory=list)
    emotion_by_id: dict[str, str] = field(default_factory=dict)
    emotion_by_url: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    duplicates: int = 0
    conflicts: int = 0

    def add(self, query: Query, result: dict[str, Any]) -> None:
        image_id = str(result.get("id") or "")
        url = str(result.get("url") or "")
        if not url:
            return
        seen = self.emotion_by_id.get(image_id) or self.emotion_by_url.get(url)
        if seen == query.emotion:
            self.duplicates += 1
        elif seen is not None:
            self.conflicts += 1
        else:
            if image_id:
                self.emotion_by_id[image_id] = query.emotion
            self.emotion_by_url[url] = query.emotion
            self.rows.append(_manifest_row(query, result, image_id, url))


class _PageFailed(Exception):
    def __init__(self, url: str, error: FetchError) -> None:
        super().__init__(url)
        self.url = url
        self.error = error


class _Throttle:
    """Keeps requests at least `interval_s` apart: the API is shared and rate limited."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = -math.inf

    def wait(self) -> None:
        delay = self._last + self.interval_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._last = time.monotonic()


def build_queries(keywords: dict[str, tuple[str, ...]], subjects: tuple[str, ...]) -> list[Query]:
    """Each keyword alone, then "<keyword> <subject>" for each subject, emotions in label order.

    An emotion without keywords is searched by its own name.
    """
    queries = []
    for emotion in EMOTIONS:
        for keyword in keywords.get(emotion) or (emotion,):
            texts = [keyword, *(f"{keyword} {subject}" for subject in subjects)]
            queries.extend(Query(emotion, text) for text in texts)
    return queries


def search_openverse(cfg: CollectConfig) -> SearchSummary:
    """Query Openverse for every keyword and write cfg.search.out (a collect manifest).

    A failing API stops the search with a one-line EmoganError naming the request; the rows
    found so far go to `<out stem>.partial.csv`, and an existing cfg.search.out is left alone.
    """
    queries = build_queries(cfg.keywords, cfg.search.subjects)
    search = _Search()
    try:
        _run_queries(cfg, queries, search)
    except _PageFailed as failure:
        raise EmoganError(_give_up(cfg.search, failure, search.rows)) from None
    _write_rows(cfg.search.out, search.rows)
    _partial_path(cfg.search.out).unlink(missing_ok=True)  # superseded by the complete list
    return SearchSummary(
        queries=len(queries),
        requests=search.requests,
        rows=len(search.rows),
        duplicates=search.duplicates,
        conflicts=search.conflicts,
        rows_per_emotion={e: sum(r["emotion"] == e for r in search.rows) for e in EMOTIONS},
        out=cfg.search.out,
    )


def _run_queries(cfg: CollectConfig, queries: list[Query], search: _Search) -> None:
    throttle = _Throttle(cfg.search.min_interval_s)
    for query in tqdm(queries, desc="search", unit="query", disable=None):
        for page in range(1, cfg.search.pages + 1):
            throttle.wait()
            search.requests += 1
            payload = _fetch_page(cfg, query, page)
            for result in payload["results"]:
                search.add(query, result)
            if page >= payload["page_count"]:
                break


def _fetch_page(cfg: CollectConfig, query: Query, page: int) -> dict[str, Any]:
    endpoint = f"{cfg.search.api_url.rstrip('/')}/images/"
    params = _page_params(cfg.search, query, page)
    try:
        payload = fetch_json(endpoint, params, timeout_s=cfg.timeout_s, retries=cfg.retries)
        return _checked_page(payload)
    except FetchError as error:
        raise _PageFailed(f"{endpoint}?{urlencode(params)}", error) from None


def _page_params(search: SearchConfig, query: Query, page: int) -> dict[str, str | int]:
    return {
        "q": query.text,
        "page": page,
        "page_size": search.page_size,
        "license_type": ",".join(search.license_type),
    }


def _checked_page(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
        raise FetchError("bad_response", "no 'results' list in the response")
    if not isinstance(payload.get("page_count"), int):
        raise FetchError("bad_response", "no integer 'page_count' in the response")
    return payload


def _give_up(search: SearchConfig, failure: _PageFailed, rows: list[dict[str, str]]) -> str:
    """Save what was found so far and say what failed, in one line."""
    error = failure.error
    line = f"Openverse search failed at {failure.url}: {error.reason}: {error.message}"
    if rows:
        partial = _partial_path(search.out)
        _write_rows(partial, rows)
        line += f"; the {len(rows)} images found so far are in {partial}"
    return line


def _partial_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.partial.csv")


def _manifest_row(query: Query, result: dict[str, Any], image_id: str, url: str) -> dict[str, str]:
    return {
        "url_or_path": url,
        "emotion": query.emotion,
        "license": _one_line(
            f"{result.get('license') or ''} {result.get('license_version') or ''}"
        ),
        "creator": _one_line(result.get("creator")),
        "source": f"openverse:{_one_line(result.get('provider') or result.get('source'))}",
        "keyword": query.text,
        "title": _one_line(result.get("title")),
        "landing_url": _one_line(result.get("foreign_landing_url")),
        "openverse_id": image_id,
    }


def _one_line(value: object) -> str:
    # Titles and creators from photo sites carry newlines and runs of spaces.
    return " ".join(str(value).split()) if value else ""


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=OUTPUT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())
