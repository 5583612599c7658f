"""`emogan translate`: every face MTCNN finds in a photo, translated by a trained generator into
one emotion or all seven; a grid per face and, on request, the photo with the translated faces
blended back in place.

A face is cut out as the crop stage cuts it (aligned on its landmarks, or with crop.align false
the square around MTCNN's box) and converted as the merge stage makes training images (resized
to image_size, then gray for a 1-channel model), so G sees what it was trained on; pasting back
undoes the alignment, so a tilted face is edited in place. G uses per-image
InstanceNorm statistics, as in the samples and evaluate stages (see stargan/model.py).
"""

import io
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from facenet_pytorch import MTCNN
from PIL import Image
from tqdm import tqdm

from emogan import atomic
from emogan.config import CropConfig, MlflowConfig, Params, project_root
from emogan.data.crop import rank_faces, rejection
from emogan.data.detect import detect_faces, load_detector
from emogan.data.framing import FaceFrame, cut_out, frame_faces, paste_back
from emogan.data.images import read_rgb
from emogan.data.merge import convert, resize_square
from emogan.data.processed import from_pixels
from emogan.device import resolve_device
from emogan.emotions import EMOTIONS, LABEL_OF
from emogan.errors import EmoganError
from emogan.stargan.grid import ALL_TARGETS, encode_png, translation_grid
from emogan.stargan.model import Generator
from emogan.stargan.trained import (
    CONFIG_FILE,
    load_generator,
    torch_error_line,
    translate_faces,
)
from emogan.tracking import load_logged_generator, resolve_tracking_uri

DEMO_WORLD = Path("data/demo")  # the demo stage's folder
FEATHER = 0.2  # share of a pasted square's side over which it fades into the photo
JPEG_QUALITY = 95
# A scheme of two letters or more: models:/..., runs:/..., https://...; a Windows C:/ is a path.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")


@dataclass(frozen=True)
class Translator:
    """A trained G and the images it takes: channels x image_size x image_size in [-1, 1]."""

    G: Generator
    channels: int
    image_size: int


def translate_photos(
    params: Params,
    photos: Sequence[Path],
    model: str,
    emotion: str,
    out_dir: Path,
    paste: bool = False,
    min_prob: float | None = None,
    device: str = "auto",
) -> dict:
    """Translate every face of every photo into `emotion` (or all seven) with the generator of
    `model` (a train stage folder or an MLflow model URI). Writes <stem>_face<N>.png, a grid per
    face numbered left to right, and with `paste` <stem>_<emotion>.jpg|png, the photo with its
    faces translated. Faces are kept as the crop stage keeps them (crop.min_prob unless
    min_prob is given, crop.min_size, crop.margin).

    A photo that cannot be read or shows no face is reported on stderr and skipped; after the
    others are written, an EmoganError names every skipped photo."""
    photos, out_dir = [Path(photo) for photo in photos], Path(out_dir)
    _refuse_shared_stems(photos, out_dir)
    if DEMO_WORLD in Path(params.fer2013.path).parents:
        print(
            f"translate: note: fer2013.path is {params.fer2013.path}, so the model learned from "
            "the drawn demo world and has never seen a real face: on a real photo expect a "
            "blur. For real faces, train on FER2013 (README: Your own data).",
            file=sys.stderr,
        )
    targets = ALL_TARGETS if emotion == "all" else (_label(emotion),)
    torch_device = resolve_device(device, "--device")
    translator = load_translator(model, params.mlflow, torch_device)
    crop = params.crop
    if min_prob is not None:
        crop = crop.model_copy(update={"min_prob": min_prob})
    detector = load_detector(str(torch_device), min_face_size=min(crop.min_size, 20))
    faces: dict[str, int] = {}
    written: list[str] = []
    skipped: list[Path] = []
    for photo in tqdm(photos, desc="translate", unit="photo", disable=None):
        try:
            found, files = _translate_photo(
                photo, detector, translator, targets, crop, out_dir, paste
            )
        except EmoganError as error:
            tqdm.write(f"translate: skipped {error}", file=sys.stderr)
            skipped.append(photo)
            continue
        faces[str(photo)] = found
        written += [str(path) for path in files]
    if skipped:
        rest = f"; the others are in {out_dir}" if faces else ""
        raise EmoganError(
            f"translate: {len(skipped)} of {len(photos)} photos not translated "
            f"({', '.join(map(str, skipped))}; reasons above){rest}"
        )
    return {
        "emotions": [EMOTIONS[target] for target in targets],
        "faces": faces,
        "files": written,
        "out_dir": str(out_dir),
    }


def load_translator(model: str, mlflow: MlflowConfig, device: torch.device) -> Translator:
    """The generator of a train stage folder, or of an MLflow model URI looked up in
    mlflow.tracking_uri, with the image size and channels it was trained on; refused, naming
    `model`, when its weights do not fit its config or it cannot take the images the config
    describes."""
    if _URI.match(model):
        G, config = load_logged_generator(model, resolve_tracking_uri(mlflow, project_root()))
        where = f"{model} (its {CONFIG_FILE})"
    else:
        G, config = load_generator(Path(model))
        where = f"{Path(model) / CONFIG_FILE}"
    if not isinstance(G, Generator):
        raise EmoganError(f"{model}: a {type(G).__name__}, not an emogan StarGAN generator")
    try:
        channels, image_size = int(config["channels"]), int(config["image_size"])
    except KeyError as error:
        raise EmoganError(f"{where}: no {error.args[0]!r} value") from None
    except ValueError as error:
        raise EmoganError(f"{where}: {error}") from None
    _check_takes(G, channels, image_size, where)
    return Translator(G.to(device), channels, image_size)


def _check_takes(G: Generator, channels: int, image_size: int, where: str) -> None:
    """Run G once on a blank image of the configured shape: G is fully convolutional, so its
    weights fix only the channels, and image_size must survive two halvings and doublings."""
    shape = f"{channels}x{image_size}x{image_size}"
    probe = torch.zeros(1, channels, max(image_size, 1), max(image_size, 1))
    target = F.one_hot(torch.tensor([0]), len(EMOTIONS)).float()
    try:
        with torch.no_grad():
            out = G(probe, target)
    except RuntimeError as error:
        raise EmoganError(
            f"{where}: the generator cannot take the {shape} images configured there "
            f"({torch_error_line(error)})"
        ) from None
    if out.shape != probe.shape:
        found = "x".join(map(str, out.shape[1:]))
        raise EmoganError(
            f"{where}: the generator turns the {shape} images configured there into {found} "
            "(image_size must be a multiple of 4)"
        )


def _translate_photo(
    photo: Path,
    detector: MTCNN,
    translator: Translator,
    targets: Sequence[int],
    crop: CropConfig,
    out_dir: Path,
    paste: bool,
) -> tuple[int, list[Path]]:
    """The number of faces translated and the files written for them."""
    rgb = read_rgb(photo)
    height, width = rgb.shape[:2]
    if min(height, width) < crop.min_size:
        raise EmoganError(
            f"{photo}: {width}x{height} px, too small for a face of {crop.min_size} px"
        )
    found = detect_faces(detector, [rgb])[0]
    kept = [face for face in rank_faces(found) if rejection(face, crop) is None]
    if not kept:
        raise EmoganError(
            f"{photo}: no face found (MTCNN probability >= {crop.min_prob}, "
            f"side >= {crop.min_size} px)"
        )
    frames = frame_faces(detector, rgb, kept, crop)
    faces = torch.stack([_face_tensor(rgb, frame, translator) for frame in frames])
    faces = faces.to(next(translator.G.parameters()).device)
    files = []
    for number, face in enumerate(faces, 1):
        grid = translation_grid(translator.G, face[None], None, targets)
        files.append(_write(out_dir / f"{photo.stem}_face{number}.png", encode_png(grid)))
    if paste:
        suffix = ".jpg" if photo.suffix.lower() in {".jpg", ".jpeg"} else ".png"
        for target in targets:
            pasted = paste_faces(rgb, frames, translate_faces(translator.G, faces, target))
            name = f"{photo.stem}_{EMOTIONS[target]}{suffix}"
            files.append(_write(out_dir / name, _encode(pasted, suffix)))
    return len(kept), files


def _face_tensor(rgb: np.ndarray, frame: FaceFrame, translator: Translator) -> torch.Tensor:
    """C x image_size x image_size in [-1, 1], made as the merge stage makes a training image."""
    pixels = convert(cut_out(rgb, frame), translator.image_size, translator.channels)
    pixels = np.atleast_3d(pixels)  # gray H x W -> H x W x 1
    return from_pixels(torch.from_numpy(pixels).permute(2, 0, 1))


def paste_faces(rgb: np.ndarray, frames: Sequence[FaceFrame], faces: np.ndarray) -> np.ndarray:
    """The photo (H x W x 3 uint8) with each face (N x S x S x C uint8) resized back to its
    frame's side and blended in where it was cut out (rotated back, for an aligned face),
    fading out towards the crop's edges; pixels outside every crop are left exactly as they
    were. A gray face replaces only the luminance, so the photo keeps its colours."""
    out = rgb.astype(np.float32)
    for frame, face in zip(frames, faces, strict=True):
        translated = resize_square(np.ascontiguousarray(face), frame.side)
        if translated.ndim == 2 or translated.shape[2] == 1:
            ycrcb = cv2.cvtColor(cut_out(rgb, frame), cv2.COLOR_RGB2YCrCb)
            ycrcb[..., 0] = translated.reshape(frame.side, frame.side)
            translated = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB)
        out = paste_back(out, frame, translated, feather_mask(frame.side))
    return np.rint(out).astype(np.uint8)


def feather_mask(side: int) -> np.ndarray:
    """side x side weights in (0, 1]: 1 in the middle, falling smoothly towards every edge over
    FEATHER of the side, so no seam shows where a pasted square meets the photo."""
    position = np.arange(side) + 0.5
    ramp = np.clip(np.minimum(position, side - position) / max(side * FEATHER, 1.0), 0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no kink where the ramp meets 1
    return np.outer(ramp, ramp)


def _label(emotion: str) -> int:
    if emotion not in LABEL_OF:
        raise EmoganError(f"--emotion: {emotion!r} is not all or one of {', '.join(EMOTIONS)}")
    return LABEL_OF[emotion]


def _refuse_shared_stems(photos: Sequence[Path], out_dir: Path) -> None:
    """Two photos named alike would overwrite each other's outputs: refuse before any work."""
    seen: dict[str, Path] = {}
    for photo in photos:
        if photo.stem in seen and seen[photo.stem] != photo:
            raise EmoganError(
                f"{seen[photo.stem]} and {photo} would both write {out_dir / photo.stem}_*; "
                "rename one"
            )
        seen[photo.stem] = photo


def _encode(rgb: np.ndarray, suffix: str) -> bytes:
    buffer = io.BytesIO()
    if suffix == ".jpg":
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    atomic.write_bytes(path, data)
    return path
