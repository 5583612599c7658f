"""The trained generator as an MLflow python_function model, the registered `emogan-stargan`:
what `mlflow.pyfunc.load_model(uri).predict(...)`, `mlflow models serve` and
`emogan translate --model models:/...` run.

Input: a batch of uint8 faces of the size G was trained on, N x S x S (grayscale) or
N x S x S x 3 (RGB), framed as the crop stage frames faces. Another shape is refused by the
model's signature (a 400 from a server, naming the expected shape) rather than resized: framing
a face from a photo is `emogan translate`'s work. Param `emotion`: one of the 7 names, or `all`
(the default). Output: N x T x S x S (x 3) uint8, T = 1, or 7 in EMOTIONS order.
"""

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

from emogan.data.processed import from_pixels, to_pixels
from emogan.emotions import EMOTIONS, LABEL_OF
from emogan.stargan.model import Generator
from emogan.stargan.trained import CONFIG_FILE, GENERATOR_FILE, load_generator, translate_faces

REGISTERED_MODEL = "emogan-stargan"  # the generator's name in the MLflow model registry
# The logged model's name (runs:/<run_id>/generator) and its one artifact, a folder with
# generator.pt and config.json.
GENERATOR_MODEL = "generator"
EMOTION_PARAM, ALL_EMOTIONS = "emotion", "all"


class FaceTranslator(PythonModel):
    """G behind MLflow's one-input interface: the target emotion is a param, not an input."""

    generator: Generator
    config: dict

    def load_context(self, context: PythonModelContext) -> None:
        self.generator, self.config = load_generator(Path(context.artifacts[GENERATOR_MODEL]))

    def predict(
        self,
        context: PythonModelContext,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        targets = _targets((params or {}).get(EMOTION_PARAM, ALL_EMOTIONS))
        faces = from_pixels(torch.from_numpy(np.asarray(model_input, dtype=np.uint8)))
        gray = faces.dim() == 3
        faces = faces[:, None] if gray else faces.permute(0, 3, 1, 2)
        translations = np.stack([translate_faces(self.generator, faces, t) for t in targets], 1)
        return translations[..., 0] if gray else translations


def model_input(faces: torch.Tensor) -> np.ndarray:
    """Faces as the networks take them (N x C x S x S in [-1, 1]) as the model takes them."""
    pixels = to_pixels(faces).permute(0, 2, 3, 1).cpu().numpy()
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def model_signature(channels: int, image_size: int) -> ModelSignature:
    """uint8 faces in, their translations out, `emotion` as a param."""
    face = (image_size, image_size) if channels == 1 else (image_size, image_size, channels)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *face))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, *face))]),
        params=ParamSchema([ParamSpec(EMOTION_PARAM, "string", ALL_EMOTIONS)]),
    )


def model_description(config: Mapping[str, Any], scores: Mapping[str, Any] | None = None) -> str:
    """A model version's description (markdown): the training settings that matter and, once
    the evaluate stage has run, its per-source scores (eval.json) beside the judge's ceiling."""
    lines = [
        f"StarGAN generator: {config['g_layers']} residual blocks in G, {config['d_layers']} "
        f"strided convolutions in D, {config['g_conv_dim']}/{config['d_conv_dim']} filters, "
        f"{config['image_size']} px with {config['channels']} channel(s), "
        f"{config['num_iters']} iterations (n_critic {config['n_critic']}), seed {config['seed']}.",
        "",
    ]
    if scores is None:
        lines.append("Scores: not yet evaluated (the evaluate stage adds them here).")
    else:
        lines.append(
            "| source | target accuracy (changed) | judge on real faces | keep L1 | FID (judge) |"
        )
        lines.append("|---|---|---|---|---|")
        for scope in ("fer2013", "custom"):
            if scores.get(scope, {}).get("target_accuracy_changed") is not None:
                s = scores[scope]
                lines.append(
                    f"| {scope} | {s['target_accuracy_changed']:.3f} | "
                    f"{s['judge_accuracy_real']:.3f} | {s['keep_l1']:.3f} | "
                    f"{s['fid_classifier']:.2f} |"
                )
    lines += [
        "",
        f"Input: N x {config['image_size']} x {config['image_size']} uint8 faces; param "
        f"`{EMOTION_PARAM}`: an emotion or `{ALL_EMOTIONS}`. "
        "`mlflow.pyfunc.load_model(uri).predict(faces, params={...})`.",
    ]
    return "\n".join(lines)


def log_translator(
    model_dir: Path, config: dict, example: np.ndarray, run_id: str, model_id: str
) -> None:
    """Log the generator of model_dir (the train stage's folder) as the python_function model
    `model_id` of run `run_id`, with example (uint8 faces) as its input example. MLflow's
    global tracking URI must point at the run's store."""
    with tempfile.TemporaryDirectory() as folder:
        for name in (GENERATOR_FILE, CONFIG_FILE):  # not D, nor run.json's local paths
            shutil.copy(Path(model_dir) / name, Path(folder) / name)
        Model.log(
            artifact_path=None,  # the 2.x name of `name`, still a required argument
            name=GENERATOR_MODEL,
            flavor=mlflow.pyfunc,
            run_id=run_id,  # pyfunc.log_model has no run_id: it would start a run of its own
            model_id=model_id,
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={GENERATOR_MODEL: folder},
            signature=model_signature(config["channels"], config["image_size"]),
            input_example=example,
            # Listed, not inferred: inference loads the model in a subprocess, for many seconds.
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"numpy=={np.__version__}",
                f"mlflow=={mlflow.__version__}",
            ],
        )


def _targets(emotion: object) -> list[int]:
    if emotion == ALL_EMOTIONS:
        return list(range(len(EMOTIONS)))
    if emotion not in LABEL_OF:
        raise MlflowException(
            f"param {EMOTION_PARAM!r}: {emotion!r} is not one of {', '.join(EMOTIONS)} or "
            f"{ALL_EMOTIONS}",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return [LABEL_OF[emotion]]
