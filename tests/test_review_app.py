"""The review web tool: HTTP safety, validation, concurrent writers, and a real browser session."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import http.client
import io
import json
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CHROMIUM_ARGS
from matplotlib import cbook
from PIL import Image

from emogan.config import ReviewConfig
from emogan.data.crop import COLUMNS as CROP_COLUMNS
from emogan.data.crop import read_crops
from emogan.data.crop_scores import CropScore, read_crop_scores, write_crop_scores
from emogan.data.review import ReviewDecision, read_decisions
from emogan.emotions import EMOTIONS
from emogan.review_app.server import create_server

SCREENSHOTS = Path("/tmp/emogan-review")  # to look at: the grid, the photo view, a failed save
SCENE_SIZE = (1280, 960)  # larger than the 1024 px the photo view scales down to
SERVE = (
    "import sys; from pathlib import Path; from emogan.config import ReviewConfig; "
    "from emogan.review_app import serve_review; "
    "serve_review(ReviewConfig(decisions=Path(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3]),"
    " port=int(sys.argv[4]), open_browser=False, reviewer='tester',"
    " scores_path=Path(sys.argv[5]) if sys.argv[5:] else None)"
)


@dataclass(frozen=True)
class World:
    crops_dir: Path
    raw_dir: Path
    decisions: Path
    crop_ids: list[str]

    @property
    def cfg(self) -> ReviewConfig:
        return ReviewConfig(decisions=self.decisions)


# ---- a small crops folder: drawn scenes (one per emotion folder) and a real photo


def _draw_face(image: np.ndarray, centre: tuple[int, int], radius: int, emotion: str) -> None:
    x, y = centre
    dark = (40, 30, 30)
    cv2.circle(image, centre, radius, (225, 185, 150), -1, cv2.LINE_AA)
    for side in (-1, 1):
        eye = (x + side * radius // 3, y - radius // 5)
        cv2.circle(image, eye, max(3, radius // 9), dark, -1, cv2.LINE_AA)
        inner_drop = {"angry": 1, "fear": -1, "surprise": -1}.get(emotion, 0) * radius // 8
        brow_inner = (x + side * radius // 7, eye[1] - radius // 4 + inner_drop)
        brow_outer = (x + side * radius // 2, eye[1] - radius // 4)
        cv2.line(image, brow_inner, brow_outer, dark, max(2, radius // 20), cv2.LINE_AA)
    mouth_y, width, thick = y + radius // 2, radius // 2, max(2, radius // 14)
    if emotion in ("happy", "sad"):
        arc = (0, 180) if emotion == "happy" else (180, 360)
        centre_y = mouth_y - radius // 6 if emotion == "happy" else mouth_y + radius // 6
        cv2.ellipse(image, (x, centre_y), (width, radius // 5), 0, *arc, dark, thick, cv2.LINE_AA)
    elif emotion in ("surprise", "fear"):
        cv2.ellipse(image, (x, mouth_y), (width // 2, radius // 5), 0, 0, 360, dark, -1)
    else:
        tilt = radius // 8 if emotion == "disgust" else 0
        cv2.line(image, (x - width, mouth_y), (x + width, mouth_y - tilt), dark, thick, cv2.LINE_AA)


def _square(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int]:
    x1, y1, x2, y2 = box
    side = min(int(max(x2 - x1, y2 - y1) * 1.4), width, height)
    x = min(max((x1 + x2) // 2 - side // 2, 0), width - side)
    y = min(max((y1 + y2) // 2 - side // 2, 0), height - side)
    return x, y, side


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def _store_photo(raw_dir: Path, emotion: str, data: bytes, suffix: str) -> tuple[str, str]:
    sha = hashlib.sha256(data).hexdigest()
    relative = f"images/{emotion}/{sha}{suffix}"
    (raw_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    (raw_dir / relative).write_bytes(data)
    return sha, relative


def _rows(photo: np.ndarray, source: tuple[str, str], emotion: str, faces: list, out: Path) -> list:
    """The crops.csv rows of one photo, saving each crop's PNG; `faces`: (box, prob), left first."""
    sha, relative = source
    height, width = photo.shape[:2]
    rows = []
    for rank, (box, prob) in enumerate(faces):
        crop_id = f"{sha[:16]}-{rank:02d}"
        x, y, side = _square(box, width, height)
        Image.fromarray(photo[y : y + side, x : x + side]).save(out / f"images/{crop_id}.png")
        x1, y1, x2, y2 = box
        cx, cy, w = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1
        landmarks = [cx - w / 4, cy - w / 8, cx + w / 4, cy - w / 8, cx, cy]
        landmarks += [cx - w / 5, cy + w / 4, cx + w / 5, cy + w / 4]
        path = f"images/{crop_id}.png"
        frame = (side, 1.0, 0.0, -x, -y)  # a crop.align false square: a pure shift
        rows.append([crop_id, path, sha, relative, emotion, prob, *box, *frame, *landmarks])
    return rows


@pytest.fixture
def world(tmp_path: Path) -> World:
    crops_dir, raw_dir = tmp_path / "crops", tmp_path / "raw"
    (crops_dir / "images").mkdir(parents=True)
    rng = np.random.default_rng(7)
    rows = []
    for index, emotion in enumerate(EMOTIONS):
        scene = np.full((SCENE_SIZE[1], SCENE_SIZE[0], 3), (90 + 20 * index, 140, 170), np.uint8)
        faces = []
        for slot in range(6):
            radius = int(rng.integers(90, 140))
            centre = (213 + 427 * (slot % 3), 240 + 480 * (slot // 3))
            # the last face is in the background, with another emotion than the folder's
            drawn = EMOTIONS[(index + 3) % 7] if slot == 5 else emotion
            _draw_face(scene, centre, radius, drawn)
            box = (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius)
            faces.append((box, round(float(rng.uniform(0.9, 0.9999)), 5)))
        faces.sort(key=lambda face: face[0][:2])
        source = _store_photo(raw_dir, emotion, _png(scene), ".png")
        rows += _rows(scene, source, emotion, faces, crops_dir)
    hopper = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
    source = _store_photo(raw_dir, "neutral", hopper, ".jpg")
    photo = np.asarray(Image.open(raw_dir / source[1]).convert("RGB"))
    # her face, and a flag detected as a face: the kind of crop a reviewer drops
    faces = [((0, 40, 120, 160), 0.71), ((160, 150, 370, 340), 0.99871)]
    rows += _rows(photo, source, "neutral", faces, crops_dir)
    with (crops_dir / "crops.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CROP_COLUMNS)
        writer.writerows(rows)
    return World(crops_dir, raw_dir, tmp_path / "review" / "decisions.csv", [r[0] for r in rows])


def _write_scores(world: World, path: Path) -> dict[str, CropScore]:
    """A crop judge's scores for the world's crops: random, the doubted ones guessed as the
    emotion three folders on, as the world's background faces show."""
    rng = np.random.default_rng(3)
    crops = read_crops(world.crops_dir)
    scores = []
    for crop in crops:
        folder_prob = float(rng.uniform(0.01, 0.99))
        other = EMOTIONS[(EMOTIONS.index(crop.emotion) + 3) % 7]
        guess_prob = 1 - folder_prob if folder_prob < 0.5 else (1 - folder_prob) / 2
        rest = (1 - folder_prob - guess_prob) / 5
        probs = {e: rest for e in EMOTIONS} | {crop.emotion: folder_prob, other: guess_prob}
        scores.append(CropScore(crop.crop_id, crop.emotion, tuple(probs.values())))
    write_crop_scores(path, scores)
    return read_crop_scores(path, crops)  # as the server reads them: rounded


# ---- HTTP, in-process


@contextlib.contextmanager
def _serving(world: World, scores_path: Path | None = None) -> Iterator[str]:
    server = create_server(
        world.cfg,
        world.crops_dir,
        world.raw_dir,
        port=0,
        reviewer="tester",
        scores_path=scores_path,
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def base_url(world: World) -> Iterator[str]:
    with _serving(world) as url:
        yield url


def _request(
    base_url: str,
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str = "",
    host: str | None = None,
):
    """(status, content type, body), with `path` sent exactly as given (no normalisation)."""
    connection = http.client.HTTPConnection(base_url.removeprefix("http://"), timeout=10)
    headers = {"Content-Type": content_type} if content_type else {}
    if host is not None:
        headers["Host"] = host
    connection.request(method, path, body=body or None, headers=headers)
    response = connection.getresponse()
    reply = response.status, response.getheader("Content-Type"), response.read()
    connection.close()
    return reply


def _post(base_url: str, path: str, payload: object) -> tuple[int, dict]:
    status, _, body = _request(
        base_url, "POST", path, json.dumps(payload).encode(), "application/json"
    )
    return status, json.loads(body)


def _state(base_url: str) -> dict:
    status, _, body = _request(base_url, "GET", "/api/state")
    assert status == 200
    return json.loads(body)


def test_state_lists_every_crop_by_folder_least_certain_first(world: World, base_url: str) -> None:
    state = _state(base_url)
    crops = state["crops"]
    assert sorted(c["id"] for c in crops) == sorted(world.crop_ids)
    order = [(EMOTIONS.index(c["emotion"]), c["prob"]) for c in crops]
    assert order == sorted(order)
    assert state["progress"] == {
        "reviewed": 0,
        "total": len(world.crop_ids),
        "by_emotion": {e: {"reviewed": 0, "total": 8 if e == "neutral" else 6} for e in EMOTIONS},
    }
    assert all(c["decision"] is None and c["effective_emotion"] == c["emotion"] for c in crops)


def test_with_scores_the_suspect_order_is_the_default_and_every_crop_has_a_hint(
    world: World, tmp_path: Path
) -> None:
    scores = _write_scores(world, tmp_path / "crop_scores.csv")
    with _serving(world, tmp_path / "crop_scores.csv") as url:
        state = _state(url)
    assert list(state["orders"]) == ["suspect", "confidence"]  # the first is the default
    assert state["suspect_unavailable"] is None
    suspect = state["orders"]["suspect"]
    order = [(EMOTIONS.index(scores[i].emotion), scores[i].folder_prob) for i in suspect]
    assert order == sorted(order) and sorted(suspect) == sorted(world.crop_ids)
    assert state["orders"]["confidence"] == [crop["id"] for crop in state["crops"]]
    hints = {crop["id"]: crop["hint"] for crop in state["crops"]}
    assert hints == {i: {"emotion": s.guess, "prob": s.guess_prob} for i, s in scores.items()}
    assert not world.decisions.exists()  # a hint is only shown


def test_without_scores_the_confidence_order_stays_and_says_why(
    world: World, tmp_path: Path
) -> None:
    missing = tmp_path / "crop_scores.csv"
    with _serving(world, missing) as url:
        state = _state(url)
    assert state["orders"]["suspect"] is None and state["orders"]["confidence"]
    assert state["suspect_unavailable"] == f"{missing}: not found (run the crop_judge stage)"
    assert all(crop["hint"] is None for crop in state["crops"])
    stale = _write_scores(world, missing)
    write_crop_scores(missing, [*stale.values()][1:])  # a crop the judge has not seen
    with _serving(world, missing) as url:
        state = _state(url)
    assert state["orders"]["suspect"] is None
    assert state["suspect_unavailable"] == (
        f"{missing}: scores other crops than crops.csv (1 unscored, 0 not in crops.csv, e.g. "
        f"{world.crop_ids[0]} unscored); rerun the crop_judge stage"
    )


def test_pages_crops_and_photos_are_served(world: World, base_url: str) -> None:
    for path, content_type in (("/", "text/html"), ("/app.js", "text/javascript")):
        status, served_type, body = _request(base_url, "GET", path)
        assert status == 200 and served_type.startswith(content_type) and body
    crop_id = world.crop_ids[0]
    status, served_type, body = _request(base_url, "GET", f"/crop/{crop_id}")
    assert (status, served_type) == (200, "image/png")
    assert body == (world.crops_dir / "images" / f"{crop_id}.png").read_bytes()
    status, served_type, body = _request(base_url, "GET", f"/photo/{crop_id}")
    assert (status, served_type) == (200, "image/jpeg")
    photo = Image.open(io.BytesIO(body))
    assert photo.size == (1024, 768)  # the 1280 x 960 scene, scaled down
    # the face box is drawn in yellow around the first face of the scene
    x1, y1, x2, y2 = next(c["box"] for c in _state(base_url)["crops"] if c["id"] == crop_id)
    red, green, blue = photo.getpixel((round((x1 + x2) / 2 * 0.8), round(y1 * 0.8)))
    assert red > 200 and green > 150 and blue < 100
    # and its five landmarks as pink dots (the left eye's: the row's first landmark)
    eye_x, eye_y = x1 + (x2 - x1) / 4, y1 + (y2 - y1) * 3 / 8
    red, green, blue = photo.getpixel((round(eye_x * 0.8), round(eye_y * 0.8)))
    assert red > 200 and green < 110 and blue > 120


@pytest.mark.parametrize(
    "path",
    [
        "/crop/../../etc/passwd",
        "/crop/%2e%2e%2fcrops.csv",
        "/crop/..%2f..%2fraw%2fimages",
        "/crop/images%2f..%2f..%2fcrops.csv",
        "/photo/../crops.csv",
        "/photo/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/../crops.csv",
        "/crops.csv",
        "/images/",
        "/crop/0000000000000000-00",
        "/crop/",
        "/photo/",
    ],
)
def test_only_known_crop_ids_are_served(base_url: str, path: str) -> None:
    status, content_type, body = _request(base_url, "GET", path)
    assert (status, content_type) == (404, "application/json")
    assert set(json.loads(body)) == {"error"}


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"action": "frown"}, 400, "action 'frown' is not keep, drop or relabel"),
        ({"action": "relabel"}, 400, "relabel needs a label from angry"),
        ({"action": "relabel", "label": "bored"}, 400, "(got 'bored')"),
        ({"action": "keep", "label": "sad"}, 400, "label 'sad' given for keep"),
        ({"action": 3}, 400, "action must be a string"),
        ({"crop_id": "0000000000000000-00", "action": "keep"}, 404, "unknown crop"),
        ({"crop_id": ["a"], "action": "keep"}, 400, "crop_id must be a string"),
    ],
)
def test_bad_decisions_are_refused_and_nothing_is_written(
    world: World, base_url: str, payload: dict, status: int, message: str
) -> None:
    answer_status, answer = _post(
        base_url, "/api/decision", {"crop_id": world.crop_ids[0]} | payload
    )
    assert answer_status == status
    assert message in answer["error"] and "\n" not in answer["error"]
    assert not world.decisions.exists()


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b'["keep"]', "application/json", 400),
        (b'{"action": "keep"}', "text/plain", 415),  # what a cross-site form can send
    ],
)
def test_malformed_requests_are_refused(
    world: World, base_url: str, body: bytes, content_type: str, status: int
) -> None:
    assert _request(base_url, "POST", "/api/decision", body, content_type)[0] == status
    assert not world.decisions.exists()


def test_requests_for_another_host_name_are_refused(world: World, base_url: str) -> None:
    port = base_url.rsplit(":", 1)[1]
    status, _, body = _request(base_url, "GET", "/api/state", host=f"evil.example:{port}")
    assert status == 403 and json.loads(body) == {
        "error": "host 'evil.example' is not this machine"
    }
    payload = json.dumps({"crop_id": world.crop_ids[0], "action": "drop", "label": ""}).encode()
    status, _, _ = _request(
        base_url, "POST", "/api/decision", payload, "application/json", host="evil.example"
    )
    assert status == 403 and not world.cfg.decisions.exists()
    assert _request(base_url, "GET", "/api/state", host=f"localhost:{port}")[0] == 200


def test_relabel_to_the_folder_emotion_is_a_keep(world: World, base_url: str) -> None:
    crop = _state(base_url)["crops"][0]
    status, answer = _post(
        base_url,
        "/api/decision",
        {"crop_id": crop["id"], "action": "relabel", "label": crop["emotion"]},
    )
    assert status == 200 and answer["crop"]["decision"]["action"] == "keep"
    assert read_decisions(world.decisions)[crop["id"]].action == "keep"


def test_undo_puts_back_the_decision_before(world: World, base_url: str) -> None:
    crop_id = world.crop_ids[0]
    _, dropped = _post(base_url, "/api/decision", {"crop_id": crop_id, "action": "drop"})
    relabel = {"crop_id": crop_id, "action": "relabel", "label": "sad"}
    status, answer = _post(base_url, "/api/decision", relabel)
    assert answer["crop"]["effective_emotion"] == "sad" and answer["progress"]["reviewed"] == 1
    previous = dropped["crop"]["decision"]
    status, answer = _post(base_url, "/api/undo", {"crop_id": crop_id, "previous": previous})
    assert status == 200 and answer["crop"]["effective_emotion"] is None
    assert read_decisions(world.decisions) == {crop_id: ReviewDecision(**previous)}
    status, answer = _post(base_url, "/api/undo", {"crop_id": crop_id})
    assert status == 200 and answer["crop"]["decision"] is None
    assert read_decisions(world.decisions) == {}


def test_concurrent_writers_lose_nothing(world: World, base_url: str) -> None:
    start = threading.Barrier(2)
    statuses: list[int] = []

    def review(crop_ids: list[str], action: str) -> None:
        start.wait()
        for crop_id in crop_ids:
            statuses.append(
                _post(base_url, "/api/decision", {"crop_id": crop_id, "action": action})[0]
            )

    halves = {"keep": world.crop_ids[:20], "drop": world.crop_ids[20:40]}
    writers = [
        threading.Thread(target=review, args=(ids, action)) for action, ids in halves.items()
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert statuses == [200] * 40
    decisions = read_decisions(world.decisions)  # also checks the file is whole, valid CSV
    assert {crop_id: d.action for crop_id, d in decisions.items()} == {
        crop_id: action for action, ids in halves.items() for crop_id in ids
    }
    assert len(world.decisions.read_text().splitlines()) == 41


def test_the_server_and_review_stages_load_without_torch() -> None:
    # They read crops.csv through emogan.data.crop, the crop stage's module, whose MTCNN and
    # torch take seconds to load: the server would wait for them at every start.
    modules = "emogan.review_app.server, emogan.data.review, emogan.data.simulated_review"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout == "False\n"


# ---- the page in a real browser, against a real server process


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(world: World, port: int, scores: Path | None = None) -> subprocess.Popen:
    args = [world.decisions, world.crops_dir, world.raw_dir, port, *([scores] if scores else [])]
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE, *map(str, args)], stdout=subprocess.PIPE, text=True
    )
    ready, _, _ = select.select([server.stdout], [], [], 30)
    line = server.stdout.readline() if ready else ""
    if line != f"review tool: http://127.0.0.1:{port}/\n":
        server.kill()
        pytest.fail(f"the review server did not start: {line!r}")
    return server


def _tile(page, crop_id: str):
    return page.locator(f'.tile[data-crop-id="{crop_id}"]')


def _selected_id(page) -> str:
    return page.locator(".tile.selected").get_attribute("data-crop-id")


@contextlib.contextmanager
def _review_page(chromium: str, url: str) -> Iterator[tuple[object, list[str]]]:
    """A Chromium page open at url, and the JavaScript errors the page raises."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        yield page, errors
        browser.close()


def test_decisions_made_with_keys_survive_a_killed_server(world: World, chromium: str) -> None:
    from playwright.sync_api import expect

    port = _free_port()
    server = _start_server(world, port)
    try:
        with _review_page(chromium, f"http://127.0.0.1:{port}/#happy") as (page, errors):
            expect(page.locator("#progress")).to_have_text(f"reviewed 0 / {len(world.crop_ids)}")
            expect(page.locator("#order-note")).to_have_text(
                "no suspect order: no crop scores given"
            )

            relabelled = _selected_id(page)  # the first tile: the least certain happy crop
            page.keyboard.press("5")  # sad
            expect(_tile(page, relabelled)).to_have_attribute("data-state", "relabel")
            dropped = _selected_id(page)  # the selection moved on
            assert dropped != relabelled
            page.keyboard.press("x")
            expect(_tile(page, dropped)).to_have_attribute("data-state", "drop")
            expect(page.locator("#progress")).to_have_text(f"reviewed 2 / {len(world.crop_ids)}")
            page.screenshot(path=SCREENSHOTS / "grid.png")

            page.keyboard.press("p")
            photo = page.locator("#photo")
            expect(photo).to_be_visible()
            page.wait_for_function("document.getElementById('photo').naturalWidth > 0")
            page.screenshot(path=SCREENSHOTS / "photo.png")
            page.keyboard.press("Escape")
            expect(page.locator("#overlay")).to_be_hidden()

            server.kill()
            server.wait()
            unsaved = _selected_id(page)
            page.keyboard.press("k")
            expect(_tile(page, unsaved)).to_have_attribute("data-sync", "failed")
            expect(page.locator("#status")).to_contain_text("1 decision(s) NOT saved")
            page.screenshot(path=SCREENSHOTS / "unsaved.png")

            server = _start_server(world, port)
            page.reload()
            expect(_tile(page, unsaved)).to_have_attribute("data-state", "unreviewed")
            expect(_tile(page, relabelled).locator(".verdict")).to_have_text("→ sad")
            expect(_tile(page, dropped).locator(".verdict")).to_have_text("dropped")
            expect(page.locator("#status")).to_be_hidden()
            assert errors == []
    finally:
        server.send_signal(signal.SIGTERM)
        stopped = server.communicate(timeout=10)[0]
    decisions = read_decisions(world.decisions)
    assert {crop_id: (d.action, d.label, d.reviewer) for crop_id, d in decisions.items()} == {
        relabelled: ("relabel", "sad", "tester"),
        dropped: ("drop", "", "tester"),
    }
    assert server.returncode == 0 and stopped == "review tool: stopped\n"


def _shown_ids(page) -> list[str]:
    return page.locator(".grid:not([hidden]) .tile").evaluate_all(
        "tiles => tiles.map(tile => tile.dataset.cropId)"
    )


def test_the_suspect_order_shows_the_doubted_crop_first_and_a_key_accepts_its_hint(
    world: World, chromium: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    scores = _write_scores(world, tmp_path / "crop_scores.csv")
    happy = sorted(
        (s for s in scores.values() if s.emotion == "happy"), key=lambda s: s.folder_prob
    )
    doubted = happy[0]
    assert doubted.guess != "happy"
    port = _free_port()
    server = _start_server(world, port, tmp_path / "crop_scores.csv")
    try:
        with _review_page(chromium, f"http://127.0.0.1:{port}/#happy") as (page, errors):
            expect(page.locator("#progress")).to_have_text(f"reviewed 0 / {len(world.crop_ids)}")
            expect(page.locator("#order")).to_have_value("suspect")
            expect(page.locator("#order-note")).to_be_hidden()
            assert _shown_ids(page) == [s.crop_id for s in happy]
            assert _selected_id(page) == doubted.crop_id  # the least likely happy face
            hint = f"judge: {doubted.guess} {doubted.guess_prob:.2f}"
            expect(_tile(page, doubted.crop_id).locator(".hint")).to_have_text(hint)
            assert not world.decisions.exists()  # shown, not recorded
            page.screenshot(path=SCREENSHOTS / "suspect.png")

            page.keyboard.press("a")
            expect(_tile(page, doubted.crop_id).locator(".verdict")).to_have_text(
                f"→ {doubted.guess}"
            )
            assert _selected_id(page) == happy[1].crop_id  # on to the next suspect

            page.select_option("#order", "confidence")
            confidence = sorted(
                (c for c in read_crops(world.crops_dir) if c.emotion == "happy"),
                key=lambda c: c.prob,
            )
            shown = [c.crop_id for c in confidence]
            assert _shown_ids(page) == shown
            page.keyboard.press("ArrowRight")  # keys move in the grid, not in the order menu
            assert _selected_id(page) == shown[shown.index(happy[1].crop_id) + 1]
            assert errors == []
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=10)
    decisions = read_decisions(world.decisions)
    assert {crop_id: (d.action, d.label, d.reviewer) for crop_id, d in decisions.items()} == {
        doubted.crop_id: ("relabel", doubted.guess, "tester")
    }
