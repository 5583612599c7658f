"""The samples stage: translation grids of fixed test faces from the trained generator."""

from pathlib import Path

import torch

from emogan import atomic
from emogan.config import Params, project_root
from emogan.data.merge import SOURCES
from emogan.data.processed import check_images, load_split
from emogan.emotions import EMOTIONS
from emogan.stargan.grid import encode_png, pick_faces, translation_grid
from emogan.stargan.trained import CONFIG_FILE, load_generator, training_run_id
from emogan.tracking import FINAL_SAMPLES, TrainingRun


def make_samples(
    params: Params,
    model_dir: Path,
    data_dir: Path,
    out_dir: Path,
) -> dict:
    """Write out_dir/all.png (sample.rows test faces spread over the emotions), per source
    <source>.png (fer2013.png, custom.png: that source's test faces, spread likewise) and, per
    emotion, <emotion>.png (test faces of that emotion); log them to the training's MLflow run
    under samples/final/. out_dir is replaced as a whole."""
    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    G, config = load_generator(model_dir)
    test = load_split(data_dir, "test", torch.device("cpu"))
    check_images(
        test, config["channels"], config["image_size"], data_dir, str(Path(model_dir) / CONFIG_FILE)
    )
    rows, seed = params.sample.rows, params.sample.seed
    groups = {"all": torch.ones_like(test.labels, dtype=torch.bool)}
    groups |= {source: test.sources == index for index, source in enumerate(SOURCES)}
    groups |= {emotion: test.labels == label for label, emotion in enumerate(EMOTIONS)}
    grids = {
        name: translation_grid(G, *pick_faces(test.images[faces], test.labels[faces], rows, seed))
        for name, faces in groups.items()
        if faces.any()
    }
    with atomic.atomic_path(out_dir) as work:
        work.mkdir()
        for name, grid in grids.items():
            (work / f"{name}.png").write_bytes(encode_png(grid))

    run_id = training_run_id(model_dir)
    if run_id:
        run = TrainingRun.attach(params.mlflow, project_root(), run_id)
        for name in grids:
            run.log_artifact(out_dir / f"{name}.png", FINAL_SAMPLES)
    return {"grids": sorted(grids), "rows": rows, "out_dir": str(out_dir), "mlflow_run_id": run_id}
