"""`collect search` against a fake Openverse API speaking the real response schema."""

from __future__ import annotations

import csv
import io
import json
import socket
from pathlib import Path

import pytest
from conftest import LoopbackServer, Reply
from PIL import Image

from emogan.config import CollectConfig, SearchConfig
from emogan.data.collect import collect_images
from emogan.data.openverse import Query, build_queries, search_openverse
from emogan.errors import EmoganError

PAGE_SIZE = 2


def openverse_result(server: LoopbackServer, image_id: str, **fields) -> dict:
    """One result as https://api.openverse.org/v1/images/ returns it."""
    return {
        "id": image_id,
        "title": f"Photo\n {image_id}",
        "indexed_on": "2024-01-01T00:00:00Z",
        "foreign_landing_url": f"https://www.flickr.com/photos/someone/{image_id}",
        "url": server.url(f"/img/{image_id}.jpg"),
        "creator": "Some One",
        "creator_url": "https://www.flickr.com/photos/someone",
        "license": "by-sa",
        "license_version": "4.0",
        "license_url": "https://creativecommons.org/licenses/by-sa/4.0/",
        "provider": "flickr",
        "source": "flickr",
        "category": "photograph",
        "genres": None,
        "filesize": 1234,
        "filetype": "jpg",
        "tags": [{"name": "face", "accuracy": None}],
        "attribution": f'"Photo {image_id}" by Some One is licensed under CC BY-SA 4.0.',
        "fields_matched": ["title"],
        "mature": False,
        "height": 24,
        "width": 32,
        "thumbnail": f"https://api.openverse.org/v1/images/{image_id}/thumb/",
        "detail_url": f"https://api.openverse.org/v1/images/{image_id}/",
        "related_url": f"https://api.openverse.org/v1/images/{image_id}/related/",
        "unstable__sensitivity": [],
        **fields,
    }


def page_reply(results: list[dict], page: int, page_count: int) -> Reply:
    body = {
        "result_count": page_count * PAGE_SIZE,
        "page_count": page_count,
        "page_size": PAGE_SIZE,
        "page": page,
        "results": results,
        "warnings": [],
    }
    return Reply(body=json.dumps(body).encode(), content_type="application/json")


def fake_openverse(server: LoopbackServer, *, fail_after: int | None = None) -> None:
    """Serve /v1/images/: "angry" has 2 pages, "angry man" repeats an angry image, "happy"
    shares one with angry (a conflict); every other query finds nothing. The very first request
    is refused with 429 and Retry-After: 0, as the real API does when throttling."""
    a1, a2, a3 = (openverse_result(server, f"a{n}") for n in (1, 2, 3))
    h1 = openverse_result(server, "h1", license="cc0", license_version="1.0", creator=None)
    pages = {
        ("angry", 1): [a1, a2],
        ("angry", 2): [a3],
        ("angry man", 1): [a1],
        ("happy", 1): [a2, h1],
    }
    for image_id in ("a1", "a2", "a3", "h1"):
        color = (int(image_id[1]) * 60, 0 if image_id[0] == "a" else 200, 0)
        buffer = io.BytesIO()
        Image.new("RGB", (32, 24), color).save(buffer, format="JPEG")
        server.routes[f"/img/{image_id}.jpg"] = [Reply(body=buffer.getvalue())]
    served = 0

    def route(query: dict[str, list[str]]) -> Reply:
        nonlocal served
        served += 1
        if served == 1:
            return Reply(429, b'{"detail": "throttled"}', "application/json", {"Retry-After": "0"})
        if fail_after is not None and served > fail_after:
            return Reply(500, b"<html>oops</html>", "text/html")
        text, page = query["q"][0], int(query["page"][0])
        page_count = max((p for (q, p) in pages if q == text), default=0)
        return page_reply(pages.get((text, page), []), page, page_count)

    server.routes["/v1/images/"] = route


def search_config(api_url: str, out: Path, **search) -> CollectConfig:
    settings = {"subjects": ("man",), "pages": 3, "page_size": PAGE_SIZE, "min_interval_s": 0.0}
    return CollectConfig(
        manifest=out,
        timeout_s=1.0,
        retries=1,
        keywords={"angry": ("angry",), "happy": ("happy",)},
        search=SearchConfig(api_url=api_url, out=out, **settings | search),
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_build_queries_pairs_keywords_with_subjects():
    queries = build_queries({"sad": ("sad", "crying")}, ("man", "girl"))

    assert queries[:3] == [
        Query("angry", "angry"),
        Query("angry", "angry man"),
        Query("angry", "angry girl"),
    ]
    assert [q.text for q in queries if q.emotion == "sad"] == [
        "sad",
        "sad man",
        "sad girl",
        "crying",
        "crying man",
        "crying girl",
    ]
    assert len(queries) == 6 * 3 + 6


def test_search_writes_a_manifest_that_collect_accepts(tmp_path, http_server):
    fake_openverse(http_server)
    out = tmp_path / "sources" / "openverse_manifest.csv"
    cfg = search_config(http_server.url("/v1"), out)

    summary = search_openverse(cfg)

    rows = read_csv(out)
    assert [(row["openverse_id"], row["emotion"], row["keyword"]) for row in rows] == [
        ("a1", "angry", "angry"),
        ("a2", "angry", "angry"),
        ("a3", "angry", "angry"),
        ("h1", "happy", "happy"),
    ]
    assert rows[0] == {
        "url_or_path": http_server.url("/img/a1.jpg"),
        "emotion": "angry",
        "license": "by-sa 4.0",
        "creator": "Some One",
        "source": "openverse:flickr",
        "keyword": "angry",
        "title": "Photo a1",
        "landing_url": "https://www.flickr.com/photos/someone/a1",
        "openverse_id": "a1",
    }
    assert (rows[3]["license"], rows[3]["creator"]) == ("cc0 1.0", "")
    # 7 emotions x (keyword, "keyword man"), one page each but "angry", which has 2 of 3 asked.
    assert (summary.queries, summary.requests) == (14, 15)
    assert http_server.hits["/v1/images/"] == 16  # and the 429, retried
    assert (summary.rows, summary.duplicates, summary.conflicts) == (4, 1, 1)
    assert summary.rows_per_emotion["angry"] == 3
    pages_asked = [path for _, path in http_server.requests if "q=angry&" in path]
    assert len(pages_asked) == 3 and not any("page=3" in path for path in pages_asked)
    assert all(
        "page_size=2" in p and "license_type=all" in p
        for _, p in http_server.requests
        if p.startswith("/v1/")
    )

    collected = collect_images(cfg, tmp_path / "raw", tmp_path / "collect.json")

    assert (collected.ok, collected.failed) == (4, 0)


def test_search_keeps_requests_apart(tmp_path, http_server):
    fake_openverse(http_server)
    cfg = search_config(http_server.url("/v1"), tmp_path / "out.csv", min_interval_s=0.05)

    search_openverse(cfg)

    times = [t for t, path in http_server.requests if path.startswith("/v1/")]
    # 15 throttled requests (the retry after the 429 is fetch.py's, not the throttle's); the
    # whole span is measured because single gaps jitter by a few ms with thread scheduling.
    assert times[-1] - times[0] >= 14 * 0.05 - 0.01


def test_dead_api_fails_with_one_line_naming_the_url(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        api = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    out = tmp_path / "out.csv"

    with pytest.raises(EmoganError) as raised:
        search_openverse(search_config(api, out))

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"Openverse search failed at {api}/images/?q=angry&page=1&")
    assert ": connection: " in message
    assert not out.exists()


def test_api_failing_midway_keeps_what_was_found(tmp_path, http_server):
    fake_openverse(http_server, fail_after=3)  # the 429, then angry page 1 and 2
    out = tmp_path / "out.csv"
    out.write_text("an earlier, complete search\n")

    with pytest.raises(EmoganError) as raised:
        search_openverse(search_config(http_server.url("/v1"), out))

    partial = tmp_path / "out.partial.csv"
    assert "q=angry+man&page=1" in str(raised.value)
    assert str(raised.value).endswith(f"the 3 images found so far are in {partial}")
    assert [row["openverse_id"] for row in read_csv(partial)] == ["a1", "a2", "a3"]
    assert out.read_text() == "an earlier, complete search\n"

    fake_openverse(http_server)  # the API is back
    search_openverse(search_config(http_server.url("/v1"), out))
    assert len(read_csv(out)) == 4 and not partial.exists()
