"""The collect stage against a real loopback HTTP server and real files."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import socket
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest
from conftest import LoopbackServer, Reply
from PIL import Image

from emogan.config import CollectConfig
from emogan.data.collect import collect_images
from emogan.errors import EmoganError

HEADER = "url_or_path,emotion,license,creator,source,keyword"


def image_bytes(color: tuple[int, int, int], fmt: str = "JPEG", size=(32, 24), **save) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny 1x1 PNG whose header claims `width` x `height`: a decompression bomb."""
    png = bytearray(image_bytes((0, 0, 0), "PNG", size=(1, 1)))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    png[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(png[ihdr - 4 : ihdr + 13]))
    png[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(png)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_manifest(path: Path, rows: list[tuple[str, str]], header: str = HEADER) -> Path:
    extra = header.count(",") - 1
    lines = [header, *(f"{where},{emotion}" + ",x" * extra for where, emotion in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config(manifest: Path | None = None, **update) -> CollectConfig:
    base = CollectConfig(timeout_s=1.0, max_bytes=200_000, retries=1, workers=4)
    return base.model_copy(update={"manifest": manifest, **update})


def run(cfg: CollectConfig, tmp_path: Path):
    return collect_images(cfg, tmp_path / "raw", tmp_path / "metrics.json")


def manifest_rows(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "raw" / "manifest.csv").open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def stored_files(tmp_path: Path) -> list[str]:
    images = tmp_path / "raw" / "images"
    return sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file())


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.jpg"


def noise_jpeg(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, bytes(range(256)) * (size[0] * size[1] * 3 // 256)).save(
        buffer, format="JPEG"
    )
    return buffer.getvalue()


JPEG = image_bytes((200, 30, 30))
NOISY = noise_jpeg()
BIG = bytes(300_000)


@pytest.mark.parametrize(
    ("reply", "reason", "update"),
    [
        (Reply(body=JPEG[:100]), "corrupt", {}),
        (Reply(body=NOISY[: len(NOISY) // 2]), "corrupt", {}),
        (Reply(body=b"\x00garbage" * 50, content_type="image/png"), "not_image", {}),
        (Reply(body=b"<html>login</html>", content_type="text/html"), "not_image", {}),
        (Reply(body=BIG), "too_large", {}),
        (Reply(body=BIG, send_length=False), "too_large", {}),
        (Reply(body=JPEG, drip_s=0.05), "timeout", {"retries": 0}),
        (Reply(404, b"nope", "text/html"), "http_404", {}),
        (Reply(body=png_claiming(5000, 5000), content_type="image/png"), "too_many_pixels", {}),
        (
            Reply(body=png_claiming(100_000, 100_000), content_type="image/png"),
            "too_many_pixels",
            {},
        ),
    ],
    ids=[
        "bad-header",
        "truncated",
        "garbage",
        "html",
        "huge",
        "huge-no-length",
        "slow-drip",
        "404",
        "bomb",
        "bomb-beyond-pillow-limit",
    ],
)
def test_a_bad_url_is_a_counted_failed_row(
    tmp_path, http_server: LoopbackServer, caplog, reply, reason, update
):
    http_server.routes["/bad"] = [reply]
    http_server.routes["/good.jpg"] = [Reply(body=JPEG)]
    manifest = write_manifest(
        tmp_path / "m.csv",
        [(http_server.url("/bad"), "sad"), (http_server.url("/good.jpg"), "happy")],
    )
    started = time.monotonic()

    summary = run(config(manifest, max_pixels=1_000_000, **update), tmp_path)

    assert time.monotonic() - started < 5
    bad, good = manifest_rows(tmp_path)
    assert (bad["status"], bad["error"].split(":")[0], bad["path"]) == ("failed", reason, "")
    assert good["status"] == "ok"
    assert (summary.ok, summary.failed, summary.failures) == (1, 1, {reason: 1})
    assert json.loads((tmp_path / "metrics.json").read_text())["failures"] == {reason: 1}
    assert stored_files(tmp_path) == [f"happy/{sha(JPEG)}.jpg"]
    assert any("/bad" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    if reason == "http_404":
        assert http_server.hits["/bad"] == 1  # a 4xx is final: no retry


def test_connection_refused_and_redirect_loop_fail_their_rows(tmp_path, http_server):
    http_server.routes["/loop"] = [Reply(302, headers={"Location": "/loop"})]
    manifest = write_manifest(
        tmp_path / "m.csv", [(closed_port_url(), "sad"), (http_server.url("/loop"), "sad")]
    )

    summary = run(config(manifest), tmp_path)

    assert summary.failures == {"connection": 1, "too_many_redirects": 1}


def test_stores_good_images_by_hash_with_provenance(tmp_path, http_server):
    png = image_bytes((10, 200, 10), "PNG", size=(40, 30))
    gif = image_bytes((10, 10, 200), "GIF", size=(16, 8))
    flaky = image_bytes((50, 50, 50))
    http_server.routes.update(
        {
            "/a.jpg": [Reply(body=JPEG)],
            "/r1": [Reply(302, headers={"Location": "/r2"})],
            "/r2": [Reply(301, headers={"Location": "/r3"})],
            "/r3": [Reply(body=png, content_type="image/png")],
            "/anim.gif": [Reply(body=gif, content_type="image/gif")],
            "/flaky.jpg": [Reply(503, b"busy", "text/html"), Reply(body=flaky)],
        }
    )
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            (http_server.url("/a.jpg"), "angry"),
            (http_server.url("/r1"), "Happy"),
            (http_server.url("/anim.gif"), "surprise"),
            (http_server.url("/flaky.jpg"), "neutral"),
        ],
        header=HEADER + ",note",
    )

    summary = run(config(manifest), tmp_path)

    assert (summary.ok, summary.failed, summary.fetched) == (4, 0, 4)
    assert http_server.hits["/flaky.jpg"] == 2  # the 503 was retried
    assert stored_files(tmp_path) == sorted(
        [
            f"angry/{sha(JPEG)}.jpg",
            f"happy/{sha(png)}.png",
            f"surprise/{sha(gif)}.png",  # named by the original bytes, converted for OpenCV
            f"neutral/{sha(flaky)}.jpg",
        ]
    )
    assert (tmp_path / "raw/images/happy" / f"{sha(png)}.png").read_bytes() == png
    with Image.open(tmp_path / "raw/images/surprise" / f"{sha(gif)}.png") as converted:
        assert (converted.format, converted.size) == ("PNG", (16, 8))
    rows = manifest_rows(tmp_path)
    assert list(rows[0]) == [
        *HEADER.split(","),
        "note",
        "sha256",
        "bytes",
        "width",
        "height",
        "status",
        "error",
        "path",
    ]
    assert rows[1] | {"note": "x"} == {
        "url_or_path": http_server.url("/r1"),
        "emotion": "happy",
        "license": "x",
        "creator": "x",
        "source": "x",
        "keyword": "x",
        "note": "x",
        "sha256": sha(png),
        "bytes": str(len(png)),
        "width": "40",
        "height": "30",
        "status": "ok",
        "error": "",
        "path": f"images/happy/{sha(png)}.png",
    }
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["ok_per_emotion"] == {
        "angry": 1,
        "disgust": 0,
        "fear": 0,
        "happy": 1,
        "sad": 0,
        "surprise": 1,
        "neutral": 1,
    }
    assert (metrics["rows"], metrics["ok"], metrics["failed"]) == (4, 4, 0)


def test_exif_orientation_is_applied(tmp_path, http_server):
    # Stored 40x20, left half red, right half blue; EXIF 6 says "rotate 90 degrees clockwise".
    sideways = Image.new("RGB", (40, 20), (0, 0, 255))
    sideways.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    sideways.save(buffer, format="JPEG", quality=95, exif=exif)
    original = buffer.getvalue()
    http_server.routes["/rotated.jpg"] = [Reply(body=original)]
    manifest = write_manifest(tmp_path / "m.csv", [(http_server.url("/rotated.jpg"), "fear")])

    run(config(manifest), tmp_path)

    (row,) = manifest_rows(tmp_path)
    assert (row["width"], row["height"], row["sha256"]) == ("20", "40", sha(original))
    with Image.open(tmp_path / "raw" / row["path"]) as stored:
        assert stored.size == (20, 40)
        assert stored.getexif().get(0x0112, 1) == 1
        top, bottom = stored.convert("RGB").getpixel((10, 5)), stored.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the red half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_duplicates_keep_the_first_listed(tmp_path, http_server):
    for path in ("/one.jpg", "/copy.jpg", "/other-emotion.jpg"):
        http_server.routes[path] = [Reply(body=JPEG)]
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            (http_server.url("/one.jpg"), "angry"),
            (http_server.url("/copy.jpg"), "angry"),
            (http_server.url("/other-emotion.jpg"), "sad"),
            (http_server.url("/one.jpg"), "angry"),
        ],
    )

    summary = run(config(manifest), tmp_path)

    rows = manifest_rows(tmp_path)
    assert [row["status"] for row in rows] == ["ok", "duplicate", "duplicate", "duplicate"]
    assert rows[1]["error"] == f"duplicate: same bytes as {http_server.url('/one.jpg')}"
    assert rows[2]["error"].startswith("emotion_conflict: ")
    assert rows[2]["error"].endswith("kept as angry")
    assert rows[2]["sha256"] == sha(JPEG) and rows[2]["path"] == ""
    assert (summary.ok, summary.duplicates, summary.emotion_conflicts) == (1, 3, 1)
    assert http_server.hits["/one.jpg"] == 1  # listed twice, fetched once
    assert stored_files(tmp_path) == [f"angry/{sha(JPEG)}.jpg"]


def test_local_paths_resolve_against_the_manifest_folder(tmp_path):
    photos = tmp_path / "sources" / "photos"
    photos.mkdir(parents=True)
    files = {
        name: image_bytes((shade, 2, 3))
        for name, shade in [("rel.jpg", 1), ("abs.jpg", 90), ("url.jpg", 180)]
    }
    for name, data in files.items():
        (photos / name).write_bytes(data)
    manifest = write_manifest(
        tmp_path / "sources" / "m.csv",
        [
            ("photos/rel.jpg", "happy"),
            (str(photos / "abs.jpg"), "happy"),
            ((photos / "url.jpg").as_uri(), "happy"),
            ("photos/missing.jpg", "happy"),
        ],
    )

    summary = run(config(manifest), tmp_path)

    assert (summary.ok, summary.failures) == (3, {"not_found": 1})
    assert stored_files(tmp_path) == sorted(f"happy/{sha(data)}.jpg" for data in files.values())


def test_from_dir_reads_one_folder_per_emotion(tmp_path):
    root = tmp_path / "download"
    (root / "Happy" / "page2").mkdir(parents=True)
    (root / "sad").mkdir()
    (root / "Happy" / "a.jpg").write_bytes(JPEG)
    (root / "Happy" / "page2" / "b.png").write_bytes(image_bytes((5, 5, 5), "PNG"))
    (root / "Happy" / ".DS_Store").write_bytes(b"finder junk")
    (root / "sad" / "notes.txt").write_text("not an image")

    summary = run(config(from_dir=root), tmp_path)

    rows = manifest_rows(tmp_path)
    described = [
        (r["url_or_path"], r["emotion"], r["source"], r["keyword"], r["status"]) for r in rows
    ]
    assert described == [
        (str(root / "Happy" / "a.jpg"), "happy", "local", "Happy", "ok"),
        (str(root / "Happy" / "page2" / "b.png"), "happy", "local", "Happy", "ok"),
        (str(root / "sad" / "notes.txt"), "sad", "local", "sad", "failed"),
    ]
    assert summary.failures == {"not_image": 1}


def test_from_dir_refuses_a_folder_that_is_not_an_emotion(tmp_path):
    (tmp_path / "download" / "joyful").mkdir(parents=True)

    with pytest.raises(EmoganError, match=r"download/joyful: folder name is not an emotion"):
        run(config(from_dir=tmp_path / "download"), tmp_path)


@pytest.mark.parametrize(
    ("header", "bad_row", "message"),
    [
        (HEADER, "{url},joy", r"m\.csv line 3: unknown emotion 'joy' \(use angry, disgust, "),
        (HEADER, ",sad", r"m\.csv line 3: empty url_or_path"),
        (HEADER, "ftp://host/a.jpg,sad", r"m\.csv line 3: unsupported URL scheme 'ftp'"),
        (
            "url_or_path,emotion,license,creator,source",
            "{url},sad",
            r"m\.csv: missing column 'keyword'",
        ),
    ],
    ids=["unknown-emotion", "empty-url", "unsupported-scheme", "missing-column"],
)
def test_bad_manifest_fails_before_fetching(tmp_path, http_server, header, bad_row, message):
    url = http_server.url("/a.jpg")
    http_server.routes["/a.jpg"] = [Reply(body=JPEG)]
    fill = "," * (header.count(",") - 1)
    rows = [header, f"{url},happy{fill}", bad_row.format(url=url) + fill]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")

    with pytest.raises(EmoganError, match=message) as raised:
        run(config(tmp_path / "m.csv"), tmp_path)

    assert "\n" not in str(raised.value)
    assert http_server.hits.total() == 0


def test_rerun_fetches_nothing_and_writes_the_same_outputs(tmp_path, http_server):
    http_server.routes["/a.jpg"] = [Reply(body=JPEG)]
    http_server.routes["/b.jpg"] = [Reply(body=image_bytes((1, 1, 1)))]
    (tmp_path / "c.jpg").write_bytes(image_bytes((2, 2, 2)))
    manifest = write_manifest(
        tmp_path / "m.csv",
        [(http_server.url("/a.jpg"), "sad"), (http_server.url("/b.jpg"), "fear"), ("c.jpg", "sad")],
    )
    first = run(config(manifest), tmp_path)
    outputs = {p: p.read_bytes() for p in (tmp_path / "raw").rglob("*") if p.is_file()}

    second = run(config(manifest), tmp_path)

    assert (first.fetched, second.fetched, second.reused, second.ok) == (3, 0, 3, 3)
    assert http_server.hits.total() == 2
    assert {p: p.read_bytes() for p in (tmp_path / "raw").rglob("*") if p.is_file()} == outputs


def test_rerun_prunes_entries_no_longer_listed(tmp_path, http_server):
    kept, dropped = JPEG, image_bytes((3, 3, 3))
    http_server.routes["/kept.jpg"] = [Reply(body=kept)]
    http_server.routes["/dropped.jpg"] = [Reply(body=dropped)]
    both = [(http_server.url("/kept.jpg"), "sad"), (http_server.url("/dropped.jpg"), "disgust")]
    run(config(write_manifest(tmp_path / "m.csv", both)), tmp_path)

    summary = run(config(write_manifest(tmp_path / "m.csv", both[:1])), tmp_path)

    assert (summary.fetched, summary.pruned) == (0, 1)
    assert stored_files(tmp_path) == [f"sad/{sha(kept)}.jpg"]
    assert [row["url_or_path"] for row in manifest_rows(tmp_path)] == [both[0][0]]
    journal = (tmp_path / "raw" / ".journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["sha256"] for line in journal] == [sha(kept)]
    assert not (tmp_path / "raw" / "images" / "disgust").exists()


def test_relabelled_entry_moves_without_refetching(tmp_path, http_server):
    http_server.routes["/a.jpg"] = [Reply(body=JPEG)]
    run(config(write_manifest(tmp_path / "m.csv", [(http_server.url("/a.jpg"), "sad")])), tmp_path)

    summary = run(
        config(write_manifest(tmp_path / "m.csv", [(http_server.url("/a.jpg"), "fear")])), tmp_path
    )

    assert (summary.fetched, http_server.hits["/a.jpg"]) == (0, 1)
    assert stored_files(tmp_path) == [f"fear/{sha(JPEG)}.jpg"]


def test_rerun_applies_lowered_limits_without_refetching(tmp_path, http_server):
    http_server.routes["/a.jpg"] = [Reply(body=JPEG)]  # 32x24
    manifest = write_manifest(tmp_path / "m.csv", [(http_server.url("/a.jpg"), "sad")])
    run(config(manifest), tmp_path)

    summary = run(config(manifest, max_pixels=500), tmp_path)

    assert (summary.fetched, summary.failures) == (0, {"too_many_pixels": 1})
    assert stored_files(tmp_path) == []


def test_changed_local_file_is_read_again(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    manifest = write_manifest(tmp_path / "m.csv", [("photo.jpg", "happy")])
    run(config(manifest), tmp_path)
    changed = image_bytes((0, 99, 0), size=(50, 50))
    photo.write_bytes(changed)

    summary = run(config(manifest), tmp_path)

    assert summary.fetched == 1
    assert stored_files(tmp_path) == [f"happy/{sha(changed)}.jpg"]


def test_fail_on_error_raises_after_writing_everything(tmp_path, http_server):
    http_server.routes["/a.jpg"] = [Reply(body=JPEG)]
    missing = http_server.url("/missing.jpg")
    manifest = write_manifest(
        tmp_path / "m.csv", [(http_server.url("/a.jpg"), "happy"), (missing, "sad")]
    )

    with pytest.raises(EmoganError) as raised:
        run(config(manifest, fail_on_error=True), tmp_path)

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("collect: 1 of 2 entries failed (first: ")
    assert f"m.csv line 3: {missing}: http_404" in message
    assert [row["status"] for row in manifest_rows(tmp_path)] == ["ok", "failed"]
    assert json.loads((tmp_path / "metrics.json").read_text())["failed"] == 1


def test_killed_run_leaves_no_partial_file_and_resumes(tmp_path, http_server):
    slow = image_bytes((7, 7, 7), size=(64, 64))
    http_server.routes["/fast.jpg"] = [Reply(body=JPEG)]
    http_server.routes["/slow.jpg"] = [Reply(body=slow, drip_s=0.02), Reply(body=slow)]
    manifest = write_manifest(
        tmp_path / "m.csv",
        [(http_server.url("/fast.jpg"), "happy"), (http_server.url("/slow.jpg"), "happy")],
    )
    raw, journal = tmp_path / "raw", tmp_path / "raw" / ".journal.jsonl"
    code = f"""
        from pathlib import Path
        from emogan.config import CollectConfig
        from emogan.data.collect import collect_images
        cfg = CollectConfig(manifest=Path({str(manifest)!r}), timeout_s=60.0, retries=0)
        collect_images(cfg, Path({str(raw)!r}), Path({str(tmp_path / "metrics.json")!r}))
    """
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)])
    try:
        deadline = time.monotonic() + 30
        while not (journal.exists() and journal.read_text() and http_server.hits["/slow.jpg"]):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # bytes of the slow image are arriving
    finally:
        process.kill()
        process.wait()

    assert not (raw / "manifest.csv").exists()
    assert stored_files(tmp_path) == [f"happy/{sha(JPEG)}.jpg"]
    summary = run(config(manifest), tmp_path)
    assert (summary.ok, summary.fetched, summary.reused) == (2, 1, 1)
    assert http_server.hits["/fast.jpg"] == 1
    assert stored_files(tmp_path) == sorted([f"happy/{sha(JPEG)}.jpg", f"happy/{sha(slow)}.jpg"])
    assert not (raw / ".staging").exists()
