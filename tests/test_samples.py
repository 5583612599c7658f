"""Translation grids and the samples stage."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from PIL import Image
from stargan_helpers import SIZE, tiny_params, write_dataset

from emogan.data.processed import load_split
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError
from emogan.stargan.grid import AMBER, GAP, HEADER, Layout, pick_faces, translation_grid
from emogan.stargan.model import Generator
from emogan.stargan.sample import make_samples
from emogan.stargan.train import resolved_config
from emogan.tracking import TrainingRun

WHITE = (255, 255, 255)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("processed"))


def _upscaled_gray(image: torch.Tensor, cell: int) -> np.ndarray:
    """1 x H x W in [-1, 1] -> cell x cell uint8, each pixel a block, as the grid draws it."""
    pixels = image[0].add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    scale = cell // pixels.shape[0]
    return np.kron(pixels, np.ones((scale, scale), np.uint8))


def test_each_row_is_a_face_then_its_seven_translations_under_a_header(data: Path) -> None:
    torch.manual_seed(0)
    G = Generator(1, len(EMOTIONS), 4, 1)
    test = load_split(data, "test", torch.device("cpu"))
    faces, labels = test.images[[0, 5, 12]], test.labels[[0, 5, 12]]  # angry, fear, neutral
    grid = translation_grid(G, faces, labels)

    layout = Layout(3, SIZE)
    assert layout.cell == 96 and grid.shape == layout.shape == (HEADER + 3 * 100, 814, 3)
    with torch.no_grad():
        for row, (face, label) in enumerate(zip(faces, labels.tolist(), strict=True)):
            y = layout.top(row)
            for column in range(1 + len(EMOTIONS)):
                x = layout.left(column)
                cell = grid[y : y + layout.cell, x : x + layout.cell]
                if column == 0:
                    expected = face
                else:
                    target = F.one_hot(torch.tensor([column - 1]), len(EMOTIONS)).float()
                    expected = G(face[None], target)[0]
                assert np.array_equal(cell[..., 0], _upscaled_gray(expected, layout.cell))
                assert np.array_equal(cell[..., 0], cell[..., 2])  # gray drawn as RGB
                border = tuple(grid[y - 1, x + layout.cell // 2])  # just above the face
                assert border == (AMBER if column == 1 + label else WHITE), (row, column)
    for column in range(1 + len(EMOTIONS)):  # a name over every column
        x = layout.left(column)
        assert (grid[: HEADER - GAP, x : x + layout.cell] < 100).any(), column


def test_faces_are_spread_over_emotions_and_fixed_by_their_own_seed(data: Path) -> None:
    test = load_split(data, "test", torch.device("cpu"))
    rng_state = torch.get_rng_state()
    faces, labels = pick_faces(test.images, test.labels, 9, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_state)  # training's random stream untouched
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1]
    assert torch.equal(pick_faces(test.images, test.labels, 9, seed=0)[0], faces)
    # 2 faces per emotion: another seed swaps some of them.
    assert not torch.equal(pick_faces(test.images, test.labels, 9, seed=1)[0], faces)


@pytest.fixture
def model_dir(data: Path, tmp_path: Path) -> Path:
    """What the train stage leaves: an (untrained) G, its config, its finished MLflow run."""
    params = tiny_params(f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = resolved_config(params)
    folder = tmp_path / "stargan"
    folder.mkdir()
    G = Generator(1, len(EMOTIONS), config["g_conv_dim"], config["g_layers"])
    torch.save(G.state_dict(), folder / "generator.pt")
    (folder / "config.json").write_text(json.dumps(config))
    run = TrainingRun.start(
        params.mlflow, tmp_path, run_id=None, run_name="tiny", params=config, tags={}
    )
    run.end("FINISHED")
    (folder / "run.json").write_text(json.dumps({"mlflow_run_id": run.run_id}))
    return folder


def test_make_samples_writes_all_one_grid_per_source_and_per_emotion_and_logs_them(
    data: Path, model_dir: Path, tmp_path: Path
) -> None:
    params = tiny_params(f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = params.model_copy(update={"sample": params.sample.model_copy(update={"rows": 3})})
    out = tmp_path / "samples"
    summary = make_samples(params, model_dir, data, out)

    names = ["all", "fer2013", "custom", *EMOTIONS]
    assert sorted(summary["grids"]) == sorted(names)
    assert sorted(path.stem for path in out.iterdir()) == sorted(names)
    assert np.asarray(Image.open(out / "all.png")).shape == Layout(3, SIZE).shape
    # custom.png starts with the one angry custom test face (every second face is custom).
    test = load_split(data, "test", torch.device("cpu"))
    assert test.sources[1] == 1 and test.labels[1] == 0
    layout = Layout(3, SIZE)
    y, x = layout.top(0), layout.left(0)
    first = np.asarray(Image.open(out / "custom.png"))[y : y + layout.cell, x : x + layout.cell]
    assert np.array_equal(first[..., 0], _upscaled_gray(test.images[1], layout.cell))
    # The test split has 2 faces per emotion, fewer than sample.rows.
    assert np.asarray(Image.open(out / "sad.png")).shape == Layout(2, SIZE).shape
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = json.loads((model_dir / "run.json").read_text())["mlflow_run_id"]
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "samples/final")}
    assert logged == {f"{name}.png" for name in names}
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_model_for_other_images_is_refused(data: Path, model_dir: Path, tmp_path: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "image_size": 32}))
    params = tiny_params(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(
        EmoganError, match=rf"images are 1x16x16 .* but {model_dir}/config.json expects 1x32x32"
    ):
        make_samples(params, model_dir, data, tmp_path / "samples")
    assert not (tmp_path / "samples").exists()


def test_without_a_trained_model_it_says_to_train(data: Path, tmp_path: Path) -> None:
    params = tiny_params(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(EmoganError, match=r"config.json: not found \(run the train stage first\)"):
        make_samples(params, tmp_path / "none", data, tmp_path / "samples")
