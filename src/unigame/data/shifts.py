"""Distribution shifts for ShapesWorld out-of-distribution tests (the NaturalBench analogue).

Pixel shifts (`noise`, `blur`, `brightness_contrast`) act on a clean render; scene-level shifts
(`background`, `scale`, `clutter`) act during rendering. Every shift keeps the templated answers true:
backgrounds and clutter use colours far from the palette and clutter never touches objects, and `scale`
keeps objects inside the image and apart (sizes change, so size words in captions no longer hold).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from unigame.data.shapes import (
    Scene,
    ShapesConfig,
    object_box,
    render_with_mask,
    size_px,
)

SHIFT_NAMES: tuple[str, ...] = ("background", "noise", "blur", "brightness_contrast", "scale", "clutter")
# Shifts after which an object's size word no longer matches its pixels.
SIZE_CHANGING_SHIFTS: frozenset[str] = frozenset({"scale"})

# Pale backgrounds: each is >= 180 RGB away from every palette colour, so the judge never sees them.
PALE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (250, 228, 228),
    (225, 235, 250),
    (245, 240, 215),
    (228, 245, 228),
    (240, 230, 248),
    (255, 255, 255),
    (218, 218, 218),
)
TEXTURES: tuple[str, ...] = ("plain", "stripes_h", "stripes_v", "stripes_d", "checker")
# Clutter marks are dark greys: >= 110 RGB from every palette colour, i.e. not vocabulary objects.
CLUTTER_GREYS: tuple[int, ...] = (30, 45, 60)


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> np.ndarray:
    return np.clip(np.round(np.asarray(a, float) + t * (np.subtract(b, a, dtype=float))), 0, 255)


def _background(scene: Scene, config: ShapesConfig, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Another pale background colour, optionally with a two-colour stripe or checker texture."""
    W = config.image_size
    t = float(np.clip(strength, 0.0, 1.0))
    i, j = rng.choice(len(PALE_COLOURS), size=2, replace=False)
    c1 = _mix(scene.background, PALE_COLOURS[int(i)], t)
    c2 = _mix(scene.background, PALE_COLOURS[int(j)], t)
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    period = int(rng.integers(2, 5)) * max(1, W // 32)
    yy, xx = np.mgrid[0:W, 0:W]
    pattern = {
        "plain": np.zeros((W, W), dtype=bool),
        "stripes_h": (yy // period) % 2 == 1,
        "stripes_v": (xx // period) % 2 == 1,
        "stripes_d": ((xx + yy) // period) % 2 == 1,
        "checker": ((xx // period) + (yy // period)) % 2 == 1,
    }[texture]
    bg = np.where(pattern[..., None], c2, c1).astype(np.uint8)
    return render_with_mask(scene, config, background=bg)[0]


def _scale_sides(scene: Scene, config: ShapesConfig, factor: float) -> list[int] | None:
    """Pixel sides after scaling by `factor`, or None if objects would leave the image or touch."""
    W = config.image_size
    sides = [max(3, int(round(size_px(o.size, W) * factor))) for o in scene.objects]
    boxes = []
    for o, s in zip(scene.objects, sides):
        x0, y0 = object_box(o, s, W)
        if x0 < 0 or y0 < 0 or x0 + s > W or y0 + s > W:
            return None
        boxes.append((x0, y0, x0 + s, y0 + s))
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            ax0, ay0, ax1, ay1 = boxes[a]
            bx0, by0, bx1, by1 = boxes[b]
            # require at least one empty pixel between boxes on some axis
            if not (ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0):
                return None
    return sides


def _scale(scene: Scene, config: ShapesConfig, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Objects drawn smaller or larger than the training sizes; growth falls back to shrinking when the
    enlarged objects would leave the image or touch each other."""
    amount = 0.35 * strength
    grow = bool(rng.integers(2))
    factors = (1 + amount, 1 - amount) if grow else (1 - amount, 1 + amount)
    for f in (*factors, 1.0):
        sides = _scale_sides(scene, config, f)
        if sides is not None:
            return render_with_mask(scene, config, sides=sides)[0]
    raise AssertionError("unreachable: factor 1.0 reproduces the sampled, valid layout")


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(r):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _clutter(scene: Scene, config: ShapesConfig, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Thin dark-grey lines and dots on the background that are not vocabulary objects and never touch
    an object (kept >= 2 px away), so counts and shapes stay as in the scene."""
    img, index = render_with_mask(scene, config)
    W = config.image_size
    forbidden = _dilate(index >= 0, 2)
    n_marks = max(1, int(round(6 * strength)))
    for _ in range(n_marks):
        grey = CLUTTER_GREYS[int(rng.integers(len(CLUTTER_GREYS)))]
        if rng.random() < 0.7:  # line segment
            length = int(rng.integers(max(3, W // 8), max(4, W // 3)))
            dy, dx = ((0, 1), (1, 0), (1, 1), (1, -1))[int(rng.integers(4))]
            y, x = int(rng.integers(W)), int(rng.integers(W))
            ys = y + dy * np.arange(length)
            xs = x + dx * np.arange(length)
        else:  # dot (1-2 px)
            y, x = int(rng.integers(W)), int(rng.integers(W))
            d = int(rng.integers(1, 3))
            ys = np.repeat(y + np.arange(d), d)
            xs = np.tile(x + np.arange(d), d)
        keep = (ys >= 0) & (ys < W) & (xs >= 0) & (xs < W)
        ys, xs = ys[keep], xs[keep]
        keep = ~forbidden[ys, xs]
        img[ys[keep], xs[keep]] = grey
    return img


def _noise(scene: Scene, config: ShapesConfig, rng: np.random.Generator, strength: float) -> np.ndarray:
    img = render_with_mask(scene, config)[0].astype(np.float32)
    img += rng.normal(0.0, 12.0 * strength, size=img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _blur(scene: Scene, config: ShapesConfig, rng: np.random.Generator, strength: float) -> np.ndarray:
    img = render_with_mask(scene, config)[0]
    radius = 0.6 * strength * config.image_size / 32
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)), dtype=np.uint8)


def _brightness_contrast(
    scene: Scene, config: ShapesConfig, rng: np.random.Generator, strength: float
) -> np.ndarray:
    img = render_with_mask(scene, config)[0].astype(np.float32)
    contrast = 1.0 + rng.choice((-1.0, 1.0)) * rng.uniform(0.5, 1.0) * 0.25 * strength
    brightness = 1.0 + rng.choice((-1.0, 1.0)) * rng.uniform(0.5, 1.0) * 0.15 * strength
    mean = img.mean()
    img = ((img - mean) * contrast + mean) * brightness
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


_SHIFTS: dict[str, Callable[[Scene, ShapesConfig, np.random.Generator, float], np.ndarray]] = {
    "background": _background,
    "noise": _noise,
    "blur": _blur,
    "brightness_contrast": _brightness_contrast,
    "scale": _scale,
    "clutter": _clutter,
}


def apply_shift(
    scene: Scene, config: ShapesConfig, name: str, rng: np.random.Generator, strength: float = 1.0
) -> np.ndarray:
    """Render `scene` under the named shift; `strength` in [0, 1] (1 = the OOD test setting) scales it.
    Deterministic given the rng state."""
    if name not in _SHIFTS:
        raise ValueError(f"unknown shift {name!r}; allowed: {', '.join(SHIFT_NAMES)}")
    if not 0.0 <= strength <= 2.0:
        raise ValueError(f"strength={strength!r} is invalid: allowed 0.0..2.0")
    return _SHIFTS[name](scene, config, rng, float(strength))
