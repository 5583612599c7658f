"""`emogan translate` with a tiny really trained generator, on a photo of two copies of
matplotlib's public-domain portrait of Grace Hopper."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import matplotlib.cbook
import mlflow.pyfunc
import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result
from PIL import Image
from stargan_helpers import SIZE, tiny_params, write_dataset

from emogan.cli import cli
from emogan.config import Params
from emogan.data.detect import detect_faces, load_detector
from emogan.data.framing import FaceFrame, cut_out, frame_faces
from emogan.data.merge import convert
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError
from emogan.serving import REGISTERED_MODEL
from emogan.stargan.grid import AMBER, GAP, HEADER, Layout
from emogan.stargan.train import train_stargan

HOPPER = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
CANVAS = (800, 400)  # width, height; wide enough for both copies and background around them
# (x, y, mirrored) of each half-size copy of the 512 x 600 portrait; her face is ~100 px wide
COPIES = [(40, 50, False), (480, 80, True)]


@pytest.fixture(scope="module")
def params(tmp_path_factory: pytest.TempPathFactory) -> Params:
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return tiny_params(f"sqlite:///{store}")


@pytest.fixture(scope="module")
def params_file(params: Params, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `--params` reads: the tiny configuration with its temporary tracking store."""
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return path


@pytest.fixture(scope="module")
def model_dir(params: Params, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real train stage output: 8 iterations on 16 px gray faces, logged to MLflow."""
    work = tmp_path_factory.mktemp("train")
    data = write_dataset(work / "processed")
    out = work / "stargan"
    train_stargan(params, data, out, work / "ckpt", work / "train.json", work / "loss.csv")
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """group.png (two faces; PNG so that untouched pixels compare exactly), blank.png (none),
    corrupt.jpg (a JPEG cut short)."""
    folder = tmp_path_factory.mktemp("photos")
    hopper = Image.open(HOPPER).resize((256, 300), Image.Resampling.LANCZOS)
    mirror = hopper.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    canvas = Image.new("RGB", CANVAS, (200, 200, 200))
    for x, y, mirrored in COPIES:
        canvas.paste(mirror if mirrored else hopper, (x, y))
    canvas.save(folder / "group.png")
    Image.new("RGB", CANVAS, (90, 110, 100)).save(folder / "blank.png")
    (folder / "corrupt.jpg").write_bytes(HOPPER.read_bytes()[:600])
    return folder


def _translate(params_file: Path, *args: object) -> Result:
    runner = CliRunner()
    arguments = ["--params", params_file, "translate", "--device", "cpu", *args]
    return runner.invoke(cli, [str(argument) for argument in arguments])


@pytest.fixture(scope="module")
def from_folder(
    params_file: Path, model_dir: Path, photos: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("translations")
    photo = photos / "group.png"
    result = _translate(params_file, photo, "--model", model_dir, "--out", out, "--paste")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["faces"] == {str(photo): 2}
    assert summary["emotions"] == list(EMOTIONS)
    return out


def _frames(params: Params, rgb: np.ndarray) -> list[FaceFrame]:
    """Where the crop stage would cut each face of the photo, left to right."""
    detector = load_detector("cpu")
    faces = detect_faces(detector, [rgb])[0]
    faces = sorted((f for f in faces if f.prob >= params.crop.min_prob), key=lambda f: f.x1)
    return frame_faces(detector, rgb, faces, params.crop)


def _covered(frame: FaceFrame, shape: tuple[int, ...]) -> np.ndarray:
    """The photo's pixels the crop touches, one pixel of interpolation included."""
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, np.round(frame.corners()).astype(np.int32), 1)
    return cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(bool)


def test_a_grid_per_face_shows_the_face_as_training_images_are_made(
    from_folder: Path, params: Params, photos: Path
) -> None:
    rgb = np.asarray(Image.open(photos / "group.png"))
    frames = _frames(params, rgb)
    assert len(frames) == 2
    assert frames[0].corners()[0, 0] < COPIES[1][0] <= frames[1].corners()[0, 0]  # face1: left

    layout = Layout(1, SIZE)
    for number, frame in enumerate(frames, 1):
        grid = np.asarray(Image.open(from_folder / f"group_face{number}.png"))
        assert grid.shape == layout.shape  # one row, the input and 7 translations
        expected = convert(cut_out(rgb, frame), SIZE, 1)
        scale = layout.cell // SIZE
        top, left = layout.top(0), layout.left(0)
        cell = grid[top : top + layout.cell, left : left + layout.cell]
        assert np.array_equal(cell[..., 0], np.kron(expected, np.ones((scale, scale), np.uint8)))
        assert not (grid == AMBER).all(axis=-1).any()  # the face's own emotion is unknown
        for column in range(1 + len(EMOTIONS)):  # a name over every column
            left = layout.left(column)
            assert (grid[: HEADER - GAP, left : left + layout.cell] < 100).any(), column


def test_pasted_photos_change_only_the_faces_luminance(
    from_folder: Path, params: Params, photos: Path
) -> None:
    rgb = np.asarray(Image.open(photos / "group.png"))
    frames = _frames(params, rgb)
    inside = np.logical_or.reduce([_covered(frame, rgb.shape) for frame in frames])
    for emotion in EMOTIONS:
        pasted = np.asarray(Image.open(from_folder / f"group_{emotion}.png"))
        assert pasted.shape == rgb.shape, emotion
        changed = (pasted != rgb).any(axis=-1)
        assert not (changed & ~inside).any(), emotion  # untouched away from the faces
        for frame in frames:
            side = frame.side
            before, after = (
                cv2.cvtColor(cut_out(image, frame), cv2.COLOR_RGB2YCrCb).astype(int)
                for image in (rgb, pasted)
            )
            diff = np.abs(after - before)
            middle = diff[side // 3 : -side // 3, side // 3 : -side // 3]
            # A gray model replaces the brightness; the skin keeps its colour (rounding aside).
            assert middle[..., 0].mean() > 10 and middle[..., 1:].mean() < 3, emotion
            ring = np.concatenate([diff[0, :, 0], diff[-1, :, 0], diff[:, 0, 0], diff[:, -1, 0]])
            assert ring.mean() < middle[..., 0].mean() / 5, emotion  # feathered, no hard seam


def test_a_tilted_face_is_edited_in_place(
    model_dir: Path, params_file: Path, params: Params, tmp_path: Path
) -> None:
    turned = Image.open(HOPPER).rotate(
        30, expand=True, resample=Image.Resampling.BICUBIC, fillcolor=(200, 200, 200)
    )
    canvas = Image.new("RGB", (900, 800), (200, 200, 200))
    canvas.paste(turned, (60, 20))
    canvas.save(tmp_path / "tilted.png")
    rgb = np.asarray(canvas)
    [frame] = _frames(params, rgb)
    assert 20 < frame.rotation < 40  # turned back upright (Hopper's own tilt aside)

    result = _translate(
        params_file, tmp_path / "tilted.png", "--model", model_dir, "--out", tmp_path / "out",
        "--emotion", "happy", "--paste",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    pasted = np.asarray(Image.open(tmp_path / "out" / "tilted_happy.png"))
    change = np.abs(pasted.astype(int) - rgb).sum(axis=-1)
    assert not (change.astype(bool) & ~_covered(frame, rgb.shape)).any()  # only the turned crop
    # ...and fills it: the middle 60% of the crop, mapped into the photo, is edited.
    grid = np.stack(np.meshgrid(np.linspace(0.2, 0.8, 15), np.linspace(0.2, 0.8, 15)), -1)
    xs, ys = np.round(frame.to_photo(grid.reshape(-1, 2) * frame.side)).astype(int).T
    assert (change[ys, xs] > 0).mean() > 0.9


def test_a_registered_or_run_model_gives_the_same_grids_as_its_folder(
    from_folder: Path,
    model_dir: Path,
    params_file: Path,
    photos: Path,
    tmp_path: Path,
) -> None:
    run_id = json.loads((model_dir / "run.json").read_text())["mlflow_run_id"]
    for uri in (f"models:/{REGISTERED_MODEL}/1", f"runs:/{run_id}/generator"):
        out = tmp_path / uri.split(":")[0]
        result = _translate(params_file, photos / "group.png", "--model", uri, "--out", out)
        assert result.exit_code == 0, result.output
        for number in (1, 2):
            name = f"group_face{number}.png"
            assert (out / name).read_bytes() == (from_folder / name).read_bytes(), uri
        assert sorted(path.name for path in out.iterdir()) == ["group_face1.png", "group_face2.png"]


def test_the_registered_model_served_over_http_translates_as_emogan_translate_does(
    from_folder: Path,
    model_dir: Path,
    params: Params,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The faces `emogan translate` cut from the photo and its translations, read off its grids.
    layout = Layout(1, SIZE)
    cells = [np.asarray(Image.open(from_folder / f"group_face{n}.png")) for n in (1, 2)]
    step = layout.cell // SIZE
    columns = [
        np.stack(
            [cell[layout.top(0) :: step, layout.left(c) :: step][:SIZE, :SIZE, 0] for cell in cells]
        )
        for c in range(1 + len(EMOTIONS))
    ]
    faces, translations = columns[0], np.stack(columns[1:], axis=1)  # N x S x S, N x 7 x S x S
    uri = f"models:/{REGISTERED_MODEL}/1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", params.mlflow.tracking_uri)
    model = mlflow.pyfunc.load_model(uri)
    assert np.array_equal(model.predict(faces), translations)
    happy = model.predict(faces, params={"emotion": "happy"})
    assert np.array_equal(happy, translations[:, [EMOTIONS.index("happy")]])

    port = _free_port()
    command = [Path(sys.executable).with_name("mlflow"), "models", "serve", "-m", uri,
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    try:
        _wait_for(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log")
        status, reply = _post(port, {"inputs": faces.tolist(), "params": {"emotion": "sad"}})
        assert status == 200
        sad = translations[:, [EMOTIONS.index("sad")]]
        assert np.array_equal(np.array(reply["predictions"], np.uint8), sad)
        status, reply = _post(port, {"inputs": faces.tolist(), "params": {"emotion": "joy"}})
        assert (status, reply["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
        assert "'joy' is not one of angry, disgust" in reply["message"]
        status, reply = _post(port, {"inputs": faces[:, :10].tolist()})
        assert (status, reply["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
        assert f"does not match expected shape (-1, {SIZE}, {SIZE})" in reply["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _wait_for(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer: {log.read_text()}")


def _post(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_photo_without_faces_and_a_corrupt_one_are_named_and_the_rest_translated(
    model_dir: Path, params_file: Path, photos: Path, tmp_path: Path
) -> None:
    command = [
        Path(sys.executable).with_name("emogan"), "--params", params_file, "translate",
        photos / "blank.png", photos / "corrupt.jpg", photos / "group.png",
        "--model", model_dir, "--emotion", "happy", "--out", tmp_path / "out", "--device", "cpu",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=300)

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert "the model learned from the drawn demo world" in lines[0]  # tiny_params: demo's FER
    assert f"translate: skipped {photos / 'blank.png'}: no face found" in done.stderr
    assert f"translate: skipped {photos / 'corrupt.jpg'}: unreadable image" in done.stderr
    assert lines[-1] == (
        f"emogan: error: translate: 2 of 3 photos not translated ({photos / 'blank.png'}, "
        f"{photos / 'corrupt.jpg'}; reasons above); the others are in {tmp_path / 'out'}"
    )
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "group_face1.png",
        "group_face2.png",
    ]
    grid = np.asarray(Image.open(tmp_path / "out" / "group_face1.png"))
    assert grid.shape == Layout(1, SIZE, targets=1).shape  # the input and its happy translation


def _broken_copy(model_dir: Path, tmp_path: Path, **config: object) -> Path:
    """The trained model's weights beside its config.json with `config` changed."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "generator.pt").write_bytes((model_dir / "generator.pt").read_bytes())
    settings = json.loads((model_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(settings | config))
    return folder


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"channels": 3},
            "{folder}/generator.pt does not fit {folder}/config.json: size mismatch for "
            "main.0.weight: ",
        ),
        (
            {"image_size": 18},
            "{folder}/config.json: the generator turns the 1x18x18 images configured there into "
            "1x16x16 (image_size must be a multiple of 4)",
        ),
    ],
    ids=["channels", "image size"],
)
def test_a_model_whose_config_does_not_fit_its_weights_is_refused(
    config: dict, message: str, model_dir: Path, params_file: Path, photos: Path, tmp_path: Path
) -> None:
    folder = _broken_copy(model_dir, tmp_path, **config)
    result = _translate(params_file, photos / "group.png", "--model", folder, "--out", tmp_path)
    assert isinstance(result.exception, EmoganError)
    assert str(result.exception).startswith(message.format(folder=folder))
    assert not list(tmp_path.glob("group_*"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("store", ["sqlite", "dead server"])
def test_a_model_uri_that_does_not_resolve_is_one_line(
    store: str, params: Params, photos: Path, tmp_path: Path
) -> None:
    if store == "dead server":
        url = f"http://127.0.0.1:{_free_port()}"
        params = params.model_copy(
            update={"mlflow": params.mlflow.model_copy(update={"tracking_uri": url})}
        )
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    uri = f"models:/{REGISTERED_MODEL}/9"

    result = _translate(params_file, photos / "group.png", "--model", uri, "--out", tmp_path)
    assert isinstance(result.exception, EmoganError)
    message = str(result.exception)
    assert message.startswith(
        f"{uri}: cannot load it from the MLflow store {params.mlflow.tracking_uri}: "
    )
    assert "\n" not in message
    assert ("not found" if store == "sqlite" else "Connection refused") in message
