"""Read any image file Pillow decodes as RGB uint8, whatever its mode or bit depth."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from emogan.errors import EmoganError

_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def read_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8. 16-bit images are scaled to 8 bits, not clipped; transparency becomes
    white (as a browser shows it); CMYK, palette and grayscale are converted."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise EmoganError(f"{path}: unreadable image ({error})") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in _WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        if values.max() > 255:  # 16-bit samples: map 0..65535 onto 0..255
            values = values / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in {"RGBA", "LA", "PA"} or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"))
