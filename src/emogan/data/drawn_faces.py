"""Faces drawn with OpenCV whose brows, eyes and mouth encode one of the 7 basic emotions.

A face is drawn upright into its own square patch, in face units (x right, y down, origin the
face centre, 1 = forehead-to-chin height), then blurred a little, rotated and pasted onto the
canvas, so every primitive shares one pose transform. The patch is premultiplied BGRA uint8:
OpenCV anti-aliases only 8-bit images, and its anti-aliased edges against the transparent patch
are exactly premultiplied colour. Shading (a lit, rounded face, dark eye sockets, a nose shadow)
and a hairline are what make MTCNN find these faces; flat cartoons are mostly missed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np

from emogan.emotions import EMOTIONS

SHIFT = 4  # sub-pixel bits for OpenCV drawing: small faces keep smooth curves
PATCH_SPAN = 2.2  # patch side in face heights: room for hair, shoulders and any rotation
HAIR_STYLES = ("short", "long", "bangs", "receding", "curly", "bun")

# Anchor colours (BGR) that looks are interpolated between.
SKIN_TONES = np.array([[45, 62, 92], [70, 100, 150], [105, 145, 200], [150, 185, 228]], float)
HAIR_COLOURS = np.array(
    [[20, 20, 25], [25, 40, 60], [40, 70, 110], [70, 130, 180], [30, 50, 140], [150, 150, 155]],
    float,
)
IRIS_COLOURS = np.array([[20, 45, 80], [140, 110, 60], [70, 110, 60], [25, 25, 30]], float)


@dataclass(frozen=True)
class FaceLook:
    """Everything about a face except its emotion, so looks carry no label information."""

    skin: tuple[float, float, float]  # BGR
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    shirt: tuple[float, float, float]
    hair_style: str
    width: float  # face width / face height
    # Who the face is: where its features sit and how big they are, in face units. Without
    # these every face of an emotion shares one geometry, and at 32 px unrelated faces lie
    # nearer each other than a JPEG copy lies to its original (BENCHMARKS.md, near-duplicates).
    eye_x: float  # half the distance between the eyes
    eye_y: float  # eye height (brows follow the eyes)
    eye_scale: float  # eye width and opening, times the expression's
    nose_y: float  # nose tip height: the nose's length
    mouth_y: float
    brow_width: float
    chin: float  # how much the face narrows towards the chin
    hairline: float  # added to the hair style's hairline height
    shading: tuple[float, ...]  # SHADING_GRID**2 gains around 1: uneven skin and light
    rotation: float  # in-plane head roll, degrees, counter-clockwise
    turn: float  # head yaw in [-1, 1]: features shift sideways
    light_angle: float  # direction the light comes from, radians
    light: float  # strength of the light gradient
    occluded: bool  # a hand over the mouth


@dataclass(frozen=True)
class Expression:
    """Where brows, lids and lips sit, in face units; one set per emotion (see EXPRESSIONS)."""

    brow_lift: float  # whole brow up (+) or down (-)
    brow_inner: float  # inner end up (+) or down (-) relative to the outer end
    brow_arch: float  # middle above the line from inner to outer end
    brow_gap: float  # half distance between the inner ends
    eye_top: float  # opening above the eye's midline
    eye_bottom: float  # opening below it (small: cheeks pushed up)
    mouth_width: float  # half width
    mouth_smile: float  # corners up (+) or down (-)
    mouth_top: float  # opening above the lips' midline
    mouth_bottom: float  # opening below it
    mouth_tilt: float  # one corner higher than the other (disgust's one-sided sneer)
    teeth: bool
    wrinkles: tuple[str, ...]  # any of "forehead", "frown", "nose", "smile"


EXPRESSIONS: dict[str, Expression] = {
    "angry": Expression(-0.03, -0.05, 0.0, 0.03, 0.011, 0.011, 0.075, -0.015, 0.0, 0.0, 0.0,
                        False, ("frown",)),
    "disgust": Expression(-0.015, -0.015, 0.005, 0.04, 0.013, 0.006, 0.095, -0.025, 0.02, 0.008,
                          0.045, True, ("nose",)),
    "fear": Expression(0.04, 0.035, -0.005, 0.04, 0.042, 0.026, 0.12, -0.02, 0.012, 0.032, 0.0,
                       True, ("forehead",)),
    "happy": Expression(0.02, 0.0, 0.012, 0.05, 0.022, 0.004, 0.13, 0.055, 0.006, 0.042, 0.0,
                        True, ("smile",)),
    "sad": Expression(0.0, 0.045, -0.006, 0.045, 0.016, 0.016, 0.09, -0.05, 0.0, 0.0, 0.0,
                      False, ()),
    "surprise": Expression(0.065, 0.0, 0.03, 0.055, 0.044, 0.028, 0.05, 0.0, 0.045, 0.06, 0.0,
                           False, ("forehead",)),
    "neutral": Expression(0.0, 0.0, 0.008, 0.05, 0.025, 0.018, 0.1, 0.0, 0.0, 0.0, 0.0,
                          False, ()),
}  # fmt: skip
EXPRESSION_JITTER = 0.003  # face units; well below the gaps between emotions

EYE_Y, EYE_X, EYE_HALF_WIDTH = -0.06, 0.145, 0.06  # the mean face; random_look varies it
BROW_ABOVE_EYE, BROW_LENGTH, BROW_WIDTH = 0.08, 0.13, 0.026
MOUTH_Y, NOSE_Y = 0.28, 0.13
# How far a face's features stray from the mean face (uniform, +-), and its shading: a coarse
# grid of random gains smoothly interpolated over the face, as real faces differ in skin and
# light. The shifts stay below the expressions' own movements, so emotion still varies most.
FEATURE_SHIFT = 0.035
SHADING_GRID, SHADING = 5, 0.2
TURN_SHIFT = 0.035  # how far features move sideways at full head turn
NOSE_DEPTH = 1.5  # the nose sticks out, so it moves further
HAIRLINE_Y = {"short": -0.3, "long": -0.29, "bangs": -0.2, "receding": -0.38, "curly": -0.3,
              "bun": -0.31}  # fmt: skip


def _mix(palette: np.ndarray, rng: np.random.Generator, jitter: float) -> tuple[float, ...]:
    i = rng.integers(len(palette))
    colour = palette[i] + rng.normal(0, jitter, 3)
    return tuple(np.clip(colour, 0, 255).tolist())


def random_look(
    rng: np.random.Generator, occlusion_prob: float, max_rotation: float = 15.0
) -> FaceLook:
    """A random look: skin, hair, eyes, clothes, pose, light, and maybe a hand over the mouth."""
    tone = rng.uniform(0, len(SKIN_TONES) - 1)  # a point on the dark-to-light scale
    low = min(int(tone), len(SKIN_TONES) - 2)
    skin = SKIN_TONES[low] + (SKIN_TONES[low + 1] - SKIN_TONES[low]) * (tone - low)
    return FaceLook(
        skin=tuple(np.clip(skin + rng.normal(0, 6, 3), 0, 255).tolist()),
        hair=_mix(HAIR_COLOURS, rng, 8),
        iris=_mix(IRIS_COLOURS, rng, 10),
        shirt=tuple(rng.uniform(20, 235, 3).tolist()),
        hair_style=str(rng.choice(HAIR_STYLES)),
        width=float(rng.uniform(0.66, 0.82)),
        eye_x=float(EYE_X + rng.uniform(-0.6, 0.6) * FEATURE_SHIFT),
        eye_y=float(EYE_Y + rng.uniform(-1, 1) * FEATURE_SHIFT),
        eye_scale=float(rng.uniform(0.85, 1.2)),
        nose_y=float(NOSE_Y + rng.uniform(-1, 1) * FEATURE_SHIFT),
        mouth_y=float(MOUTH_Y + rng.uniform(-1, 1) * FEATURE_SHIFT),
        brow_width=float(BROW_WIDTH * rng.uniform(0.7, 1.5)),
        chin=float(rng.uniform(0.1, 0.35)),
        hairline=float(rng.uniform(-1.5, 1.5) * FEATURE_SHIFT),
        shading=tuple((1 + rng.uniform(-SHADING, SHADING, SHADING_GRID**2)).tolist()),
        rotation=float(rng.uniform(-max_rotation, max_rotation)),
        turn=float(rng.uniform(-1, 1)),
        light_angle=float(rng.uniform(0, 2 * np.pi)),
        light=float(rng.uniform(0.1, 0.45)),
        occluded=bool(rng.random() < occlusion_prob),
    )


def _jittered(emotion: str, rng: np.random.Generator) -> Expression:
    """The emotion's expression with small random changes, so no two faces are identical."""
    base = EXPRESSIONS[emotion]
    fields = {
        name: value + rng.normal(0, EXPRESSION_JITTER)
        for name, value in vars(base).items()
        if isinstance(value, float)
    }
    return Expression(**{**vars(base), **fields})


def _bgra(colour: tuple[float, ...] | np.ndarray, shade: float = 1.0) -> tuple[int, ...]:
    b, g, r = (min(255, max(0, round(c * shade))) for c in colour)
    return b, g, r, 255


@dataclass(frozen=True)
class _Pen:
    """Draws on a patch in face units."""

    scale: float  # pixels per face height
    origin: float  # pixel position of the face centre (both axes)

    def fixed(self, points: np.ndarray) -> np.ndarray:
        pixels = np.asarray(points, float) * self.scale + self.origin
        return np.round(pixels * (1 << SHIFT)).astype(np.int32)

    def fill(self, img: np.ndarray, points: np.ndarray, colour: tuple[int, ...]) -> None:
        cv2.fillPoly(img, [self.fixed(points)], colour, cv2.LINE_AA, SHIFT)

    def stroke(
        self, img: np.ndarray, points: np.ndarray, colour: tuple[int, ...], width: float
    ) -> None:
        thickness = max(1, round(width * self.scale))
        cv2.polylines(img, [self.fixed(points)], False, colour, thickness, cv2.LINE_AA, SHIFT)

    def ellipse(
        self,
        img: np.ndarray,
        centre: tuple[float, float],
        axes: tuple[float, float],
        colour: tuple[int, ...] | float,
    ) -> None:
        """A filled ellipse; `axes` are its half width and half height."""
        at = tuple(self.fixed(centre).tolist())
        axes = tuple(np.round(np.array(axes) * self.scale * (1 << SHIFT)).astype(int).tolist())
        cv2.ellipse(img, at, axes, 0, 0, 360, colour, -1, cv2.LINE_AA, SHIFT)

    def grid(self, side: int) -> tuple[np.ndarray, np.ndarray]:
        """Face-unit coordinates (x, y) of every pixel centre."""
        axis = (np.arange(side, dtype=np.float32) + 0.5 - self.origin) / self.scale
        return np.meshgrid(axis, axis)

    @contextmanager
    def clipped(self, img: np.ndarray, outline: np.ndarray) -> Iterator[np.ndarray]:
        """Yield a copy of `img` to draw on; only what falls inside `outline` is kept."""
        layer = img.copy()
        yield layer
        mask = np.zeros(img.shape[:2], np.uint8)
        cv2.fillPoly(mask, [self.fixed(outline)], 255, cv2.LINE_AA, SHIFT)
        x, y, w, h = cv2.boundingRect(mask)
        m = mask[y : y + h, x : x + w, None].astype(np.float32) / 255
        old, new = img[y : y + h, x : x + w], layer[y : y + h, x : x + w]
        img[y : y + h, x : x + w] = np.round(old * (1 - m) + new * m).astype(np.uint8)


def _lens(
    cx: float,
    cy: float,
    half_width: float,
    top: float,
    bottom: float,
    bend: float = 0.0,
    tilt: float = 0.0,
    roundness: float = 0.5,
) -> np.ndarray:
    """Closed outline of an eye or a mouth: a midline whose ends are raised by `bend` and
    tilted by `tilt`, opened by `top` above it and `bottom` below it."""
    t = np.linspace(-1, 1, 25)
    mid = cy - bend * t**2 + tilt * t
    opening = (1 - t**2) ** roundness
    x = cx + half_width * t
    upper = np.stack([x, mid - np.maximum(top, 0) * opening], 1)
    lower = np.stack([x, mid + np.maximum(bottom, 0) * opening], 1)
    return np.concatenate([upper, lower[::-1]])


def _curve(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 12) -> np.ndarray:
    """Quadratic curve through p0, p1 (at the middle) and p2."""
    control = 2 * p1 - (p0 + p2) / 2
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * t * (1 - t) * control + t**2 * p2


def _outline(look: FaceLook, n: int = 48) -> np.ndarray:
    """The face: an egg, wider at the cheekbones than at the chin."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    y = 0.5 * np.sin(t)
    x = look.width / 2 * np.cos(t) * (1 - look.chin * np.clip(y / 0.5, 0, 1) ** 2)
    return np.stack([x, y], 1)


def face_box(
    look: FaceLook, centre: tuple[float, float], size: float
) -> tuple[float, float, float, float]:
    """Pixel box (x1, y1, x2, y2) of the rotated face outline: top of the forehead (under the
    hair) to chin, cheek to cheek. MTCNN's boxes start lower, near the hairline: IoU ~0.7."""
    angle = np.radians(look.rotation)
    rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    points = _outline(look) @ rot.T * size + np.asarray(centre)
    return (*points.min(0).tolist(), *points.max(0).tolist())


def _draw_hair_back(img: np.ndarray, pen: _Pen, look: FaceLook) -> None:
    half = look.width / 2 + 0.09
    back = np.array([[-half, 0.0], [-half - 0.03, 0.7], [half + 0.03, 0.7], [half, 0.0]])
    pen.fill(img, back, _bgra(look.hair, 0.85))
    pen.ellipse(img, (0, -0.04), (half, 0.58), _bgra(look.hair, 0.85))


def _draw_body(img: np.ndarray, pen: _Pen, look: FaceLook) -> None:
    pen.ellipse(img, (0, 0.95), (0.6, 0.3), _bgra(look.shirt))
    neck = np.array([[-0.13, 0.2], [-0.14, 0.75], [0.14, 0.75], [0.13, 0.2]])
    pen.fill(img, neck, _bgra(look.skin, 0.78))
    for side in (-1, 1):
        pen.ellipse(
            img, (side * (look.width / 2 - 0.01), -0.01), (0.045, 0.085), _bgra(look.skin, 0.9)
        )
    pen.fill(img, _outline(look), _bgra(look.skin))


def _shade_sockets(img: np.ndarray, pen: _Pen, look: FaceLook) -> None:
    """Darken the skin where a lit face is in shadow: eye sockets, the nose's side and underside,
    under the lower lip."""
    dark = np.zeros(img.shape[:2], np.float32)
    x = look.turn * TURN_SHIFT
    for side in (-1, 1):
        pen.ellipse(dark, (x + side * look.eye_x, look.eye_y), (0.1, 0.065), 0.32)
    away_from_light = -np.sign(np.cos(look.light_angle))
    pen.ellipse(dark, (x * NOSE_DEPTH + 0.04 * away_from_light, 0.05), (0.028, 0.1), 0.35)
    pen.ellipse(dark, (x * NOSE_DEPTH, look.nose_y + 0.04), (0.05, 0.018), 0.3)
    pen.ellipse(dark, (x, look.mouth_y + 0.09), (0.06, 0.02), 0.2)
    dark = cv2.GaussianBlur(dark, (0, 0), 0.035 * pen.scale)
    img[..., :3] = np.round(img[..., :3] * (1 - dark[..., None])).astype(np.uint8)


def _hairline(look: FaceLook) -> np.ndarray:
    """The front edge of the hair, right temple to left, flat on top and falling at the temples."""
    top = HAIRLINE_Y[look.hair_style] + look.hairline
    temple = -0.06 if look.hair_style != "receding" else -0.2
    half = look.width / 2 * 0.96
    x = np.linspace(half, -half, 21)
    y = top + (temple - top) * np.abs(x / half) ** 4
    if look.hair_style == "bangs":
        y += 0.025 * (np.arange(len(x)) % 2)  # a ragged fringe
    if look.hair_style == "receding":
        y -= 0.06 * np.exp(-((np.abs(x) - half * 0.55) ** 2) / 0.004)  # the M shape
    return np.stack([x, y], 1)


def _draw_hair_front(img: np.ndarray, pen: _Pen, look: FaceLook) -> None:
    half = look.width / 2 + 0.025
    t = np.linspace(np.pi * 1.02, np.pi * 1.98, 30)  # over the top, ear level to ear level
    crown = np.stack([half * np.cos(t), -0.02 + 0.54 * np.sin(t)], 1)
    pen.fill(img, np.concatenate([crown, _hairline(look)]), _bgra(look.hair))
    if look.hair_style == "curly":
        for angle in np.linspace(np.pi * 1.05, np.pi * 1.95, 9):
            pen.ellipse(
                img, (half * np.cos(angle), 0.54 * np.sin(angle)), (0.06, 0.06), _bgra(look.hair)
            )
    if look.hair_style == "bun":
        pen.ellipse(img, (0, -0.6), (0.12, 0.09), _bgra(look.hair))


def _draw_brows(img: np.ndarray, pen: _Pen, look: FaceLook, expr: Expression) -> None:
    colour = _bgra(np.minimum(look.hair, look.skin), 0.6)
    for side in (-1, 1):
        sneer = expr.mouth_tilt * side  # disgust lowers the brow on the sneering side
        y = look.eye_y - BROW_ABOVE_EYE
        inner = np.array([side * expr.brow_gap, y - expr.brow_lift - expr.brow_inner + sneer])
        outer = np.array([side * (expr.brow_gap + BROW_LENGTH), y - expr.brow_lift + sneer])
        middle = (inner + outer) / 2 - [0, expr.brow_arch]
        shift = np.array([look.turn * TURN_SHIFT + side * (look.eye_x - EYE_X), 0])
        curve = _curve(inner + shift, middle + shift, outer + shift)
        pen.stroke(img, curve, colour, look.brow_width)


def _draw_eyes(img: np.ndarray, pen: _Pen, look: FaceLook, expr: Expression) -> None:
    lash = _bgra(look.hair, 0.35)
    for side in (-1, 1):
        cx = side * look.eye_x + look.turn * TURN_SHIFT
        size = look.eye_scale
        outline = _lens(cx, look.eye_y, EYE_HALF_WIDTH * size, expr.eye_top * size,
                        expr.eye_bottom * size, roundness=0.7)  # fmt: skip
        pen.fill(img, outline, (225, 232, 238, 255))
        with pen.clipped(img, outline) as inside:
            iris_x = cx + look.turn * 0.01  # looking the way the head turns
            pen.ellipse(inside, (iris_x, look.eye_y), (0.026, 0.026), _bgra(look.iris))
            pen.ellipse(inside, (iris_x, look.eye_y), (0.012, 0.012), (10, 10, 10, 255))
        upper = outline[: len(outline) // 2]
        pen.stroke(img, upper, lash, 0.011)
        pen.stroke(img, outline[len(outline) // 2 :], _bgra(look.skin, 0.6), 0.005)


def _draw_nose(img: np.ndarray, pen: _Pen, look: FaceLook) -> None:
    x, y = look.turn * TURN_SHIFT * NOSE_DEPTH, look.nose_y
    pen.ellipse(img, (x, y - 0.02), (0.02, 0.03), _bgra(look.skin, 1.07))  # lit tip
    for side in (-1, 1):
        wing = np.array([[x + side * 0.045, y - 0.035], [x + side * 0.052, y],
                         [x + side * 0.03, y + 0.018]])  # fmt: skip
        pen.stroke(img, wing, _bgra(look.skin, 0.62), 0.008)
        pen.ellipse(img, (x + side * 0.022, y + 0.012), (0.013, 0.006), _bgra(look.skin, 0.35))


def _draw_mouth(img: np.ndarray, pen: _Pen, look: FaceLook, expr: Expression) -> None:
    cx = look.turn * TURN_SHIFT
    outline = _lens(cx, look.mouth_y, expr.mouth_width, expr.mouth_top, expr.mouth_bottom,
                    bend=expr.mouth_smile, tilt=-expr.mouth_tilt)  # fmt: skip
    lips = (look.skin[0] * 0.6, look.skin[1] * 0.6, min(255, look.skin[2] * 0.85 + 20))
    if expr.mouth_top + expr.mouth_bottom > 0.01:
        pen.fill(img, outline, (35, 25, 70, 255))
        if expr.teeth:
            with pen.clipped(img, outline) as inside:
                teeth = outline[: len(outline) // 2] + [0, 0.022]
                pen.stroke(inside, teeth, (215, 225, 230, 255), 0.04)
    pen.stroke(img, np.concatenate([outline, outline[:1]]), _bgra(lips), 0.016)


def _draw_wrinkles(img: np.ndarray, pen: _Pen, look: FaceLook, expr: Expression) -> None:
    line = _bgra(look.skin, 0.7)
    x = look.turn * TURN_SHIFT
    for kind in expr.wrinkles:
        if kind == "forehead":
            for y in (-0.24, -0.28):
                pen.stroke(img, _curve(np.array([x - 0.12, y]), np.array([x, y - 0.012]),
                                       np.array([x + 0.12, y])), line, 0.006)  # fmt: skip
        elif kind == "frown":
            for side in (-1, 1):
                pen.stroke(img, np.array([[x + side * 0.015, -0.16], [x + side * 0.008, -0.1]]),
                           line, 0.007)  # fmt: skip
        elif kind == "nose":
            for y in (0.0, 0.03):
                pen.stroke(
                    img, np.array([[x - 0.03, y], [x, y + 0.01], [x + 0.03, y]]), line, 0.006
                )
        elif kind == "smile":
            for side in (-1, 1):
                corner = np.array([x + side * (expr.mouth_width + 0.02), look.mouth_y - 0.01])
                wing = np.array([x + side * 0.07, look.nose_y])
                middle = (corner + wing) / 2 + [side * 0.025, 0]
                pen.stroke(img, _curve(wing, middle, corner), line, 0.007)


def _draw_hand(img: np.ndarray, pen: _Pen, look: FaceLook) -> None:
    """A hand over the mouth, coming in from one side, fingers across the face."""
    side = 1 if look.turn >= 0 else -1
    skin, crease = _bgra(look.skin, 1.04), _bgra(look.skin, 0.72)
    arm = np.array(
        [[side * 0.12, 0.3], [side * 0.02, 0.95], [side * 0.3, 0.95], [side * 0.34, 0.3]]
    )
    pen.fill(img, arm, skin)
    pen.ellipse(img, (side * 0.2, look.mouth_y + 0.06), (0.16, 0.14), skin)
    for i, y in enumerate(np.linspace(look.mouth_y - 0.08, look.mouth_y + 0.07, 4)):
        reach = 0.17 - 0.02 * abs(i - 1.5)
        pen.ellipse(img, (side * 0.12 - side * reach / 2, y), (reach, 0.027), skin)
        finger_tip = side * 0.12 - side * reach * 1.4
        pen.stroke(img, np.array([[finger_tip, y + 0.026], [side * 0.2, y + 0.03]]), crease, 0.005)


def _light(img: np.ndarray, pen: _Pen, look: FaceLook) -> None:
    """A light gradient across the head and a darker rim, so the face reads as round, and the
    face's own shading."""
    side = img.shape[0]
    x, y = pen.grid(side)
    direction = np.cos(look.light_angle) * x + np.sin(look.light_angle) * y
    rim = np.clip((x / (look.width / 2)) ** 2 + (2 * y) ** 2, 0, 1.6)
    grid = np.array(look.shading, np.float32).reshape(SHADING_GRID, SHADING_GRID)
    # The grid spans the face (-0.5 to 0.5 both ways), not the whole patch.
    to_grid = (SHADING_GRID - 1) * (np.stack([x, y]) + 0.5)
    shading = cv2.remap(grid, *to_grid.astype(np.float32), cv2.INTER_CUBIC, None,
                        cv2.BORDER_REPLICATE)  # fmt: skip
    gain = np.clip((1 + look.light * direction - 0.22 * rim) * shading, 0.3, 1.6)[..., None]
    img[..., :3] = np.clip(img[..., :3] * gain, 0, 255).astype(np.uint8)


def _render(emotion: str, look: FaceLook, size: float, rng: np.random.Generator) -> np.ndarray:
    """The face as an upright premultiplied BGRA float patch, PATCH_SPAN face heights wide."""
    side = int(np.ceil(size * PATCH_SPAN))
    pen = _Pen(scale=size, origin=side / 2)
    img = np.zeros((side, side, 4), np.uint8)
    expr = _jittered(emotion, rng)
    if look.hair_style == "long":
        _draw_hair_back(img, pen, look)
    _draw_body(img, pen, look)
    _shade_sockets(img, pen, look)
    _draw_hair_front(img, pen, look)
    _draw_wrinkles(img, pen, look, expr)
    _draw_brows(img, pen, look, expr)
    _draw_eyes(img, pen, look, expr)
    _draw_nose(img, pen, look)
    _draw_mouth(img, pen, look, expr)
    if look.occluded:
        _draw_hand(img, pen, look)
    _light(img, pen, look)
    _, y = pen.grid(side)
    fade = np.clip((1.05 - y) / 0.3, 0, 1)  # the body fades out instead of ending in an edge
    patch = img.astype(np.float32) * fade[..., None]
    return cv2.GaussianBlur(patch, (0, 0), max(0.4, size / 250))


def draw_face(
    canvas: np.ndarray,
    centre: tuple[float, float],
    size: float,
    emotion: str,
    look: FaceLook,
    rng: np.random.Generator,
) -> tuple[float, float, float, float]:
    """Paint one face onto `canvas` (H x W x 3 float32 BGR, 0-255) in place.

    `centre` is the face centre in pixels and `size` its forehead-to-chin height. Returns the
    face box (x1, y1, x2, y2) in pixels, see face_box.
    """
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}")
    patch = _render(emotion, look, size, rng)
    side = patch.shape[0]
    pose = cv2.getRotationMatrix2D((side / 2, side / 2), look.rotation, 1.0)
    x0, y0 = round(centre[0] - side / 2), round(centre[1] - side / 2)
    pose[:, 2] += (centre[0] - side / 2 - x0, centre[1] - side / 2 - y0)  # sub-pixel placement
    patch = cv2.warpAffine(patch, pose, (side, side), flags=cv2.INTER_LINEAR)
    _paste(canvas, patch, x0, y0)
    return face_box(look, centre, size)


def _paste(canvas: np.ndarray, patch: np.ndarray, x0: int, y0: int) -> None:
    h, w = canvas.shape[:2]
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + patch.shape[1], w), min(y0 + patch.shape[0], h)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    part = patch[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    alpha = part[..., 3:] / 255
    region = canvas[cy0:cy1, cx0:cx1]
    region *= 1 - alpha
    region += part[..., :3]
