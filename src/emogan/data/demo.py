"""The demo stage: an offline world of drawn faces with known ground truth.

It stands in for photos collected from the web by emotion keyword (scene photos with faces at
several sizes, some showing another emotion than their folder, some with no face at all) and for
FER2013 (48x48 grayscale faces in the Kaggle CSV format with FER2013's class imbalance, a share
of them mislabelled, and FER+ votes for every row drawn around the face's true emotion), so the
whole pipeline runs offline and its evaluation numbers mean something. It plants near-duplicates
(planted_duplicates.csv): FER2013 rows copied into other rows, web photos that are an enlarged
FER2013 face (FER2013 was itself collected by web image search), and scene photos listed twice.

Every item draws from its own generator seeded by (seed, kind, item), so items are independent
of each other and the same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from emogan.atomic import atomic_path
from emogan.config import DemoConfig
from emogan.data.drawn_faces import FaceLook, draw_face, face_box, random_look
from emogan.data.fer2013 import FER2013_COUNTS
from emogan.data.ferplus import COLUMN_OF_LABEL, HEADER, VOTE_COLUMNS
from emogan.data.planted import ALTERATIONS, alter
from emogan.emotions import EMOTIONS, LABEL_OF

MANIFEST_COLUMNS = ("url_or_path", "emotion", "license", "creator", "source", "keyword")
TRUTH_COLUMNS = ("photo", "photo_emotion", "face", "emotion", "background",
                 "x1", "y1", "x2", "y2", "occluded", "rotation", "hair_style")  # fmt: skip
FER_USAGES = ("Training", "PublicTest", "PrivateTest")
# One row per planted near-duplicate. copy and original are FER rows (fer2013:line:N, as
# data/processed/index.csv's origin) or drawn faces (<photo>#<face>, as ground_truth.csv's).
PLANTED_COLUMNS = ("copy", "original", "alteration")
PLANTED_CSV = "planted_duplicates.csv"
FER_FIRST_LINE = 2  # CSV line of the first FER row, after the header
WEB_PHOTO_SCALE, WEB_PHOTO_BORDER = 4, 64  # a FER face enlarged 4x, edges extended by 64 px
RELISTED_SCALE, RELISTED_QUALITY = 0.75, 80  # a scene photo listed again, smaller, re-encoded
# FER2013's real Training counts; the demo keeps their proportions (disgust rare, happy common).
KEYWORD_ADJECTIVES = {"angry": "angry", "disgust": "disgusted", "fear": "scared", "happy": "happy",
                      "sad": "sad", "surprise": "surprised", "neutral": "neutral"}  # fmt: skip
KEYWORD_SUBJECTS = ("man", "woman", "boy", "girl", "family", "people")

JPEG_QUALITY = 92
MIN_FACE = 40  # px, forehead to chin: the smallest face MTCNN still finds reliably
MAX_FACE = 0.6  # of the photo's height (or width, if narrower)
SIZE_STEP = (0.5, 0.8)  # each further face is this much smaller than the previous one
PLACEMENT_TRIES = 60  # random spots tried per face before it is left out
FER_SIZE = 48
FER_DRAW = 72  # FER faces are drawn larger, then shrunk like a downscaled photo
STUDIO_ZOOM, STUDIO_LIGHT = 1.3, 0.15  # face height in frames; light gradient strength

FERPLUS_FILE = "fer2013new.csv"
# FER+ votes: 10 annotators; the true emotion gets a share drawn from ANNOTATOR_AGREEMENT, the
# rest goes mostly to the emotion most often confused with it (the FER+ paper's confusions), and
# to unknown, contempt, NF and the other emotions. The true emotion always gets the most votes,
# so a majority, when there is one, is the truth.
ANNOTATORS = 10
ANNOTATOR_AGREEMENT = (0.45, 0.95)
CONFUSED_WITH = {"angry": "disgust", "disgust": "angry", "fear": "surprise", "happy": "neutral",
                 "sad": "neutral", "surprise": "fear", "neutral": "sad"}  # fmt: skip
# Of the votes that miss the true emotion: the confused emotion, the non-emotions, the others.
MISSED_VOTES = {"confused": 0.5, "unknown": 0.15, "contempt": 0.08, "NF": 0.02, "others": 0.25}

# Generator streams: one per kind of item.
PHOTO, FACELESS, FER_FACE, FER_ORDER, FER_VOTES, PLANTED = range(1, 7)


@dataclass(frozen=True)
class DrawnFace:
    emotion: str
    centre: tuple[float, float]
    size: float  # px, forehead to chin
    look: FaceLook
    background: bool  # shows another emotion than its photo's folder

    @property
    def box(self) -> tuple[float, float, float, float]:
        return face_box(self.look, self.centre, self.size)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _ramp(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """H x W x 1 float32 values rising from 0 to 1 along a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    y = np.arange(height, dtype=np.float32)[:, None, None] / height
    x = np.arange(width, dtype=np.float32)[None, :, None] / width
    t = np.cos(angle) * x + np.sin(angle) * y
    return (t - t.min()) / max(float(np.ptp(t)), 1e-6)


def _gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A float32 BGR image shading from one random colour to another."""
    start, end = rng.uniform(20, 235, (2, 3)).astype(np.float32)
    return start + (end - start) * _ramp(rng, width, height)


def _clutter(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Background: a gradient, a blotchy texture and random shapes and lines, none face-like."""
    canvas = _gradient(rng, width, height)
    blotches = cv2.resize(rng.normal(0, 25, (6, 8, 3)).astype(np.float32), (width, height))
    canvas += blotches
    scale = min(width, height)
    for _ in range(rng.integers(6, 18)):
        colour = rng.uniform(0, 255, 3).tolist()
        x, y = int(rng.integers(width)), int(rng.integers(height))
        kind = rng.integers(4)
        if kind == 0:
            w, h = (rng.uniform(0.05, 0.4, 2) * scale).astype(int).tolist()
            cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, -1, cv2.LINE_AA)
        elif kind == 1:
            axes = tuple((rng.uniform(0.03, 0.25, 2) * scale).astype(int).tolist())
            cv2.ellipse(canvas, (x, y), axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA)
        elif kind == 2:
            end = (int(rng.integers(width)), int(rng.integers(height)))
            cv2.line(canvas, (x, y), end, colour, int(rng.integers(1, 8)), cv2.LINE_AA)
        else:
            corners = rng.integers(0, [width, height], (int(rng.integers(3, 7)), 2))
            cv2.fillPoly(canvas, [corners.astype(np.int32)], colour, cv2.LINE_AA)
    return canvas


def _finish(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera effects: brightness, a light gradient, a vignette and sensor noise; -> uint8."""
    height, width = canvas.shape[:2]
    y = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None, None]
    x = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :, None]
    vignette = rng.uniform(0, 0.6) * (x**2 + y**2)
    light = rng.uniform(0, 0.4) * (_ramp(rng, width, height) - 0.5)
    gain = rng.uniform(0.75, 1.15) * (1 + light) - vignette
    noise = rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(2, 8)
    return np.clip(np.round(canvas * gain + noise), 0, 255).astype(np.uint8)


def _face_sizes(cfg: DemoConfig, rng: np.random.Generator) -> list[float]:
    """Face heights in px, largest (the main face) first, each clearly smaller than the last."""
    count = int(rng.integers(1, cfg.max_faces_per_photo + 1))
    largest = rng.uniform(0.3, MAX_FACE) * min(cfg.photo_height, cfg.photo_width)
    sizes = [max(MIN_FACE, largest)]
    while len(sizes) < count and sizes[-1] * SIZE_STEP[1] >= MIN_FACE:
        sizes.append(max(MIN_FACE, sizes[-1] * rng.uniform(*SIZE_STEP)))
    return sizes


def _footprint(centre: np.ndarray, size: float) -> np.ndarray:
    """Area (x1, y1, x2, y2) a face needs to itself: head, hair and neck; shoulders may overlap."""
    return np.concatenate(
        [centre - [0.55 * size, 0.68 * size], centre + [0.55 * size, 0.95 * size]]
    )


def _overlaps(box: np.ndarray, others: list[np.ndarray]) -> bool:
    return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in others)


def _place(
    cfg: DemoConfig, rng: np.random.Generator, sizes: list[float]
) -> list[tuple[np.ndarray, float]]:
    """Centres for as many faces as fit without overlapping; the whole face inside the photo."""
    placed: list[tuple[np.ndarray, float]] = []
    taken: list[np.ndarray] = []
    for size in sizes:
        low = np.array([0.45, 0.55]) * size  # the face box stays inside the photo
        high = np.array([cfg.photo_width, cfg.photo_height]) - low
        if np.any(high <= low):
            continue
        for _ in range(PLACEMENT_TRIES):
            centre = rng.uniform(low, high)
            footprint = _footprint(centre, size)
            if not _overlaps(footprint, taken):
                placed.append((centre, size))
                taken.append(footprint)
                break
    return placed


def _scene(
    cfg: DemoConfig, rng: np.random.Generator, emotion: str, with_faces: bool
) -> tuple[np.ndarray, list[DrawnFace]]:
    """One photo (uint8 BGR) and its faces, main face first."""
    canvas = _clutter(rng, cfg.photo_width, cfg.photo_height)
    placed = _place(cfg, rng, _face_sizes(cfg, rng)) if with_faces else []
    faces = [
        _pick_face(cfg, rng, emotion, centre, size, i == 0)
        for i, (centre, size) in enumerate(placed)
    ]
    for face in reversed(faces):  # far (small) faces first: near shoulders pass in front of them
        draw_face(canvas, face.centre, face.size, face.emotion, face.look, rng)
    return _finish(canvas, rng), faces


def _pick_face(
    cfg: DemoConfig,
    rng: np.random.Generator,
    emotion: str,
    centre: np.ndarray,
    size: float,
    main: bool,
) -> DrawnFace:
    """The main face shows the folder's emotion; another face sometimes a different one."""
    background = not main and rng.random() < cfg.background_face_prob
    if background:
        emotion = str(rng.choice([e for e in EMOTIONS if e != emotion]))
    look = random_look(rng, cfg.occlusion_prob)
    return DrawnFace(emotion, (float(centre[0]), float(centre[1])), size, look, background)


def _fer_face(rng: np.random.Generator, emotion: str, cfg: DemoConfig) -> np.ndarray:
    """A 48x48 grayscale face filling the frame as in FER2013.

    Wild, as the scene photos: on a gradient, tilted up to 10 degrees, turned, lit from any side,
    with camera noise and maybe a hand over the mouth. Studio (demo.fer_studio): upright, facing
    the camera, evenly lit, on a plain background and closer, so that the expression is most of
    what varies between faces besides who they are (skin, hair, face shape).
    """
    if cfg.fer_studio:
        look = replace(random_look(rng, 0.0, max_rotation=0), turn=0.0, light=STUDIO_LIGHT)
        canvas = np.full((FER_DRAW, FER_DRAW, 3), rng.uniform(60, 200), np.float32)
        # Closer than wild faces: the brows, eyes and mouth span more pixels at 48 px.
        centre, size = (FER_DRAW / 2, FER_DRAW * 0.53), FER_DRAW * STUDIO_ZOOM
        draw_face(canvas, centre, size, emotion, look, rng)
        photo = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    else:
        canvas = _gradient(rng, FER_DRAW, FER_DRAW)
        look = random_look(rng, cfg.occlusion_prob, max_rotation=10)
        centre = FER_DRAW * (0.5 + rng.normal(0, 0.025, 2))
        size = FER_DRAW * rng.uniform(0.95, 1.12)
        draw_face(canvas, tuple(centre.tolist()), size, emotion, look, rng)
        photo = _finish(canvas, rng)
    small = cv2.resize(photo, (FER_SIZE, FER_SIZE), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)


def fer_counts(cfg: DemoConfig) -> dict[str, dict[str, int]]:
    """Rows per emotion and usage, in FER2013's Training proportions scaled so that the mean per
    emotion is fer_train_per_emotion (Training) and fer_test_per_emotion (test, split in half
    between PublicTest and PrivateTest with at least one row each)."""
    training = dict(zip(EMOTIONS, FER2013_COUNTS["Training"], strict=True))
    mean = sum(training.values()) / len(training)
    counts = {}
    for emotion, real in training.items():
        test = max(2, round(real * cfg.fer_test_per_emotion / mean))
        counts[emotion] = {
            "Training": max(1, round(real * cfg.fer_train_per_emotion / mean)),
            "PublicTest": test - test // 2,
            "PrivateTest": test // 2,
        }
    return counts


def _fer_rows(cfg: DemoConfig) -> list[tuple[int, str, int, int, str]]:
    """(label, usage, usage index, item, alteration) in file order: by usage, labels shuffled
    within one. A planted copy has the label, usage index and item of the row it copies (so it
    draws the same face), its own usage and an alteration; the others have alteration ""."""
    counts = fer_counts(cfg)
    blocks = []
    for u, usage in enumerate(FER_USAGES):
        items = [(LABEL_OF[e], usage, u, i, "") for e in EMOTIONS for i in range(counts[e][usage])]
        blocks.append([items[k] for k in _rng(cfg.seed, FER_ORDER, u).permutation(len(items))])
    originals = [row for block in blocks for row in block]
    rng = _rng(cfg.seed, PLANTED, FER_FACE)
    sources = rng.permutation(len(originals))[: cfg.planted_duplicates]
    for k, source in enumerate(sources.tolist()):
        label, _, u, i, _ = originals[source]
        # every other copy goes into another Usage: the leak across splits
        copy_u = (u + 1 + int(rng.integers(2))) % len(FER_USAGES) if k % 2 == 0 else u
        block = blocks[copy_u]
        copy = (label, FER_USAGES[copy_u], u, i, ALTERATIONS[k % len(ALTERATIONS)])
        block.insert(int(rng.integers(len(block) + 1)), copy)
    return [row for block in blocks for row in block]


def _fer_line(rows: list[tuple[int, str, int, int, str]], copy: tuple) -> str:
    """The origin (fer2013:line:N) of the row `copy` copies, or of `copy` itself if it is none."""
    label, _, u, i, _ = copy
    index = rows.index((label, FER_USAGES[u], u, i, ""))
    return f"fer2013:line:{index + FER_FIRST_LINE}"


def _write_fer(cfg: DemoConfig, rows: list[tuple[int, str, int, int, str]], root: Path) -> int:
    """fer2013.csv and its FER+ votes; return how many rows were written with a wrong label."""
    lines, vote_lines = ["emotion,pixels,Usage"], [",".join(HEADER)]
    mislabelled = 0
    progress = tqdm(rows, desc="demo fer2013", unit="face", disable=None)
    for row, (label, usage, u, i, alteration) in enumerate(progress):
        rng = _rng(cfg.seed, FER_FACE, u, label, i)
        face = _fer_face(rng, EMOTIONS[label], cfg)
        if alteration:
            face = alter(face, alteration, rng)
        votes_rng = _rng(cfg.seed, FER_VOTES, u, label, i)
        written = label
        if votes_rng.random() < cfg.fer_label_noise:
            others = [other for other in LABEL_OF.values() if other != label]
            written = int(votes_rng.choice(others))
            mislabelled += 1
        lines.append(f"{written},{' '.join(map(str, face.ravel().tolist()))},{usage}")
        vote_lines.append(ferplus_line(usage, row, ferplus_votes(votes_rng, label)))
    (root / "fer2013.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / FERPLUS_FILE).write_text("\n".join(vote_lines) + "\n", encoding="utf-8")
    return mislabelled


def ferplus_line(usage: str, row: int, votes: np.ndarray) -> str:
    """One row of a FER+ votes file, its image named after its row as Microsoft's are."""
    return f"{usage},fer{row:07d}.png,{','.join(map(str, votes.tolist()))}"


def ferplus_votes(rng: np.random.Generator, label: int) -> np.ndarray:
    """ANNOTATORS votes over FER+'s columns for a face of this FER2013 label."""
    true = COLUMN_OF_LABEL[label]
    confused = COLUMN_OF_LABEL[LABEL_OF[CONFUSED_WITH[EMOTIONS[label]]]]
    others = [COLUMN_OF_LABEL[o] for o in range(len(EMOTIONS)) if o != label]
    others.remove(confused)
    agreement = rng.uniform(*ANNOTATOR_AGREEMENT)
    shares = np.zeros(len(VOTE_COLUMNS))
    shares[true] = agreement
    shares[confused] = (1 - agreement) * MISSED_VOTES["confused"]
    for column in ("unknown", "contempt", "NF"):
        shares[VOTE_COLUMNS.index(column)] = (1 - agreement) * MISSED_VOTES[column]
    shares[others] = (1 - agreement) * MISSED_VOTES["others"] / len(others)
    votes = rng.multinomial(ANNOTATORS, shares)
    rivals = np.array([column for column in range(len(VOTE_COLUMNS)) if column != true])
    while votes[rivals].max() >= votes[true]:  # one vote at a time from the leading rival
        votes[rivals[np.argmax(votes[rivals])]] -= 1
        votes[true] += 1
    return votes


def _planted_fer(rows: list[tuple[int, str, int, int, str]]) -> list[dict]:
    """A PLANTED_COLUMNS row per planted FER row."""
    return [
        {"copy": f"fer2013:line:{n + FER_FIRST_LINE}", "original": _fer_line(rows, row),
         "alteration": row[4]}
        for n, row in enumerate(rows)
        if row[4]
    ]  # fmt: skip


@dataclass(frozen=True)
class _Photo:
    emotion: str  # the folder, i.e. the keyword it was "found" with
    index: int
    with_faces: bool
    stream: tuple[int, ...]  # generator keys after the seed

    @property
    def path(self) -> str:
        return f"photos/{self.emotion}/{self.emotion}_{self.index:04d}.jpg"


def _photo_plan(cfg: DemoConfig) -> list[_Photo]:
    """photos_per_emotion photos with faces per folder, then the faceless ones spread over them."""
    photos = [
        _Photo(emotion, i, True, (PHOTO, LABEL_OF[emotion], i))
        for emotion in EMOTIONS
        for i in range(cfg.photos_per_emotion)
    ]
    photos += [
        _Photo(EMOTIONS[j % len(EMOTIONS)], cfg.photos_per_emotion + j // len(EMOTIONS), False,
               (FACELESS, j))
        for j in range(cfg.faceless_photos)
    ]  # fmt: skip
    return photos


def _write_photo(cfg: DemoConfig, photo: _Photo, root: Path) -> tuple[dict, list[dict]]:
    """Draw and save one photo; return its manifest row and its ground-truth rows."""
    rng = _rng(cfg.seed, *photo.stream)
    keyword = f"{KEYWORD_ADJECTIVES[photo.emotion]} {rng.choice(KEYWORD_SUBJECTS)}"
    image, faces = _scene(cfg, rng, photo.emotion, photo.with_faces)
    _save_jpeg(root, photo.path, image, JPEG_QUALITY)
    listed = _listed(photo.path, photo.emotion, keyword)
    return listed, [_truth_row(photo, k, face) for k, face in enumerate(faces)]


def _save_jpeg(root: Path, path: str, image: np.ndarray, quality: int) -> None:
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(jpeg.tobytes())


def _listed(path: str, emotion: str, keyword: str) -> dict:
    """A manifest row."""
    return {"url_or_path": path, "emotion": emotion, "license": "CC0-1.0",
            "creator": "emogan demo", "source": "demo", "keyword": keyword}  # fmt: skip


def _write_web_photos(
    cfg: DemoConfig, rows: list[tuple[int, str, int, int, str]], root: Path
) -> tuple[list[dict], list[dict], list[dict]]:
    """Close-up photos that are an enlarged FER row's face: manifest, ground-truth and
    PLANTED_COLUMNS rows. The face fills the FER frame, so the frame is its box."""
    originals = [row for row in rows if not row[4]]
    picks = _rng(cfg.seed, PLANTED, PHOTO).permutation(len(originals))
    listed, truth, planted = [], [], []
    for k, pick in enumerate(picks[: cfg.planted_duplicates // 4].tolist()):
        label, _, u, i, _ = originals[pick]
        emotion = EMOTIONS[label]
        face = _fer_face(_rng(cfg.seed, FER_FACE, u, label, i), emotion, cfg)
        side = FER_SIZE * WEB_PHOTO_SCALE
        enlarged = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        photo = cv2.copyMakeBorder(enlarged, *[WEB_PHOTO_BORDER] * 4, cv2.BORDER_REPLICATE)
        path = f"photos/{emotion}/web_{k:04d}.jpg"
        _save_jpeg(root, path, cv2.cvtColor(photo, cv2.COLOR_GRAY2BGR), JPEG_QUALITY)
        listed.append(_listed(path, emotion, f"{KEYWORD_ADJECTIVES[emotion]} face"))
        low, high = WEB_PHOTO_BORDER, WEB_PHOTO_BORDER + side
        truth.append({
            "photo": path, "photo_emotion": emotion, "face": 0, "emotion": emotion,
            "background": False, "x1": low, "y1": low, "x2": high, "y2": high,
            "occluded": False, "rotation": 0.0, "hair_style": "",
        })  # fmt: skip
        original = _fer_line(rows, originals[pick])
        planted.append({"copy": f"{path}#0", "original": original, "alteration": "web_photo"})
    return listed, truth, planted


def _write_relisted_photos(
    cfg: DemoConfig, manifest: list[dict], truth: list[dict], root: Path
) -> tuple[list[dict], list[dict], list[dict]]:
    """Scene photos listed again, smaller and re-encoded, as keyword searches find the same
    photo at several sizes: manifest, ground-truth and PLANTED_COLUMNS rows."""
    with_faces = [row for row in manifest if any(t["photo"] == row["url_or_path"] for t in truth)]
    picks = _rng(cfg.seed, PLANTED, FACELESS).permutation(len(with_faces))
    listed, relisted_truth, planted = [], [], []
    for pick in picks[: cfg.planted_duplicates // 4].tolist():
        original = with_faces[pick]
        path = original["url_or_path"].replace(".jpg", "_small.jpg")
        image = cv2.imread(str(root / original["url_or_path"]))
        small = cv2.resize(image, None, fx=RELISTED_SCALE, fy=RELISTED_SCALE,
                           interpolation=cv2.INTER_AREA)  # fmt: skip
        _save_jpeg(root, path, small, RELISTED_QUALITY)
        listed.append(original | {"url_or_path": path})
        for face in (t for t in truth if t["photo"] == original["url_or_path"]):
            box = {k: round(face[k] * RELISTED_SCALE, 1) for k in ("x1", "y1", "x2", "y2")}
            relisted_truth.append(face | box | {"photo": path})
            planted.append({"copy": f"{path}#{face['face']}",
                            "original": f"{face['photo']}#{face['face']}",
                            "alteration": "relisted"})  # fmt: skip
    return listed, relisted_truth, planted


def _truth_row(photo: _Photo, index: int, face: DrawnFace) -> dict:
    x1, y1, x2, y2 = (round(v, 1) for v in face.box)
    return {
        "photo": photo.path, "photo_emotion": photo.emotion, "face": index,
        "emotion": face.emotion, "background": face.background,
        "x1": x1, "y1": y1, "x2": x2, "y2": y2, "occluded": face.look.occluded,
        "rotation": round(face.look.rotation, 1), "hair_style": face.look.hair_style,
    }  # fmt: skip


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(text.getvalue(), encoding="utf-8")


def make_demo(cfg: DemoConfig, out_dir: Path) -> dict:
    """Write the demo world into out_dir, replacing it as a whole, and return its summary.

    Layout: photos/<emotion>/<emotion>_NNNN.jpg (and the planted web_NNNN.jpg and
    <emotion>_NNNN_small.jpg), manifest.csv (the collect stage's input), ground_truth.csv (one
    row per drawn face), fer2013.csv (Kaggle format), fer2013new.csv (its FER+ votes),
    planted_duplicates.csv, summary.json.
    An interrupted run leaves the previous out_dir, or none.
    """
    manifest, truth = [], []
    with atomic_path(Path(out_dir)) as root:
        root.mkdir()
        for photo in tqdm(_photo_plan(cfg), desc="demo photos", unit="photo", disable=None):
            listed, faces = _write_photo(cfg, photo, root)
            manifest.append(listed)
            truth += faces
        fer_rows = _fer_rows(cfg)
        mislabelled = _write_fer(cfg, fer_rows, root)
        planted = _planted_fer(fer_rows)
        web = _write_web_photos(cfg, fer_rows, root)
        relisted = _write_relisted_photos(cfg, manifest, truth, root)
        for listed, faces, copies in (web, relisted):
            manifest += listed
            truth += faces
            planted += copies
        _write_csv(root / "manifest.csv", MANIFEST_COLUMNS, manifest)
        _write_csv(root / "ground_truth.csv", TRUTH_COLUMNS, truth)
        _write_csv(root / PLANTED_CSV, PLANTED_COLUMNS, planted)
        summary = {
            "photos": len(manifest),
            "faceless_photos": cfg.faceless_photos,
            "faces": len(truth),
            "background_faces": sum(row["background"] for row in truth),
            "occluded_faces": sum(row["occluded"] for row in truth),
            "fer2013": fer_counts(cfg),  # by true emotion
            "fer2013_mislabelled": mislabelled,
            "planted_duplicates": Counter(row["alteration"] for row in planted),
        }
        (root / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
