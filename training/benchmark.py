"""Generator of the project's own VQA benchmark: questions whose answer hides in one small, query-chosen region.

Why: no VQA dataset can be downloaded here, and the claim ARR-COC has to prove is that a *query-aware* token budget
beats uniform pooling when the answer lives in a small region that only the question identifies. This benchmark
isolates exactly that. Each image is a cluttered canvas (default 448x448) holding several coloured shapes; each
shape carries a small handwritten digit (scikit-learn's bundled ``load_digits``: the UCI optical-recognition digits,
8x8, upscaled to 16-24 px). Four question types probe different allocation needs:

==========  =============================================  ==========================================
type        example                                        what the answer depends on
==========  =============================================  ==========================================
``digit``   "what digit is in the red circle?"             fine detail inside one region (the shape)
``colour``  "what colour is the shape holding a 7?"        search for one glyph, then its region
``count``   "how many triangles?"                          coverage of the whole image
``yesno``   "is there a blue square?"                      search; one region when the answer is yes
==========  =============================================  ==========================================

Ground truth is unambiguous by construction: every (colour, shape) pair occurs at most once per image and every
digit at most once among the shapes; shapes never overlap (one per cell of a jittered grid). Clutter (grey lines,
grey outlines of non-vocabulary forms, grey "distractor" digits outside any shape, texture and pixel noise) stays
desaturated and never draws a vocabulary shape, so colour, shape and count questions refer only to the coloured
shapes. Handwriting instances are split disjointly between train/val/test, so the
test digits are unseen writing.

Rows follow the common schema of ``training/data.py`` (``image, question, answers, question_id, question_type``)
with ``answers`` as 10 identical strings, so the VQA accuracy of Antol et al. 2015 / Goyal et al. 2017 applies
unchanged, plus ``target_box`` (the queried shape's ``[x0, y0, x1, y1)`` pixel box, x1/y1 exclusive; ``[]`` when no
single region holds the answer: ``count``, and ``yesno`` answered "no") and ``scene`` (the JSON scene description,
from which the answer can be re-derived and the image re-rendered).

Everything is deterministic by seed: each image draws from ``numpy.random.SeedSequence([seed, split_id, index])``,
so results do not depend on chunking or the number of worker processes. ``datasets`` is imported lazily, so the
rendering worker processes start quickly.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np
from PIL import Image, ImageChops, ImageDraw
from tqdm.auto import tqdm

if TYPE_CHECKING:
    import datasets

__all__ = [
    "BENCHMARK_VERSION",
    "TINY_GENERATOR",
    "DEFAULT_COLOURS",
    "DEFAULT_SHAPES",
    "DEFAULT_SIZES",
    "QUESTION_TYPES",
    "SPLIT_IDS",
    "BenchmarkCfg",
    "Distractor",
    "Question",
    "Scene",
    "SceneObject",
    "benchmark_features",
    "generate_rows",
    "make_benchmark",
    "make_question",
    "make_question_about",
    "render_scene",
    "sample_scene",
]

BENCHMARK_VERSION = "1.0.0"
QUESTION_TYPES = ("digit", "colour", "count", "yesno")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 50_000, "val": 2_000, "test": 5_000}
# Saturated fills, far from the grey clutter and from each other.
DEFAULT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 225),
    "yellow": (240, 210, 40),
    "purple": (150, 70, 200),
    "orange": (245, 135, 30),
}
DEFAULT_SHAPES = ("circle", "square", "triangle", "diamond", "cross")
_PLURALS = {
    "circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds", "cross": "crosses",
}  # fmt: skip
N_ANSWERS = 10  # VQAv2-style: the answer is stored 10 times so vqa_accuracy applies
_GLYPH_POOL_SEED = 20240601  # fixed, so the train/val/test handwriting split is the same for every --seed
_CHUNK = 64  # rows per worker task
_MARGIN = 6  # minimum gap in pixels between a shape and its grid cell's border


# The 64 px generator of the `tiny` preset's mini-benchmark: the tests, `--smoke` runs and configs/*/tiny.yaml
# (`data.generate_cfg`, kept equal by tests/training/test_configs.py) all use it.
TINY_GENERATOR: dict[str, Any] = {"image_size": 64, "shape_size": [16, 20], "glyph_size": [6, 8], "min_objects": 2,
                                  "max_objects": 3, "distractor_glyphs": 1, "clutter_lines": 4, "clutter_outlines": 1}


@dataclass(frozen=True)
class BenchmarkCfg:
    """Generator parameters (recorded in the manifest)."""

    image_size: int = 448  # canvas side in pixels
    min_objects: int = 4  # coloured shapes per image, inclusive range
    max_objects: int = 8
    shape_size: tuple[int, int] = (48, 64)  # shape bounding-box side in pixels, inclusive range
    glyph_size: tuple[int, int] = (16, 24)  # digit glyph side in pixels, inclusive range
    shapes: tuple[str, ...] = DEFAULT_SHAPES  # subset of DEFAULT_SHAPES
    colours: tuple[str, ...] = tuple(DEFAULT_COLOURS)  # subset of DEFAULT_COLOURS
    question_types: tuple[str, ...] = QUESTION_TYPES  # subset of QUESTION_TYPES
    question_weights: tuple[float, ...] | None = None  # sampling weights per question type; None: uniform
    questions_per_image: int = 1  # rows that share one image (each asks a fresh question)
    distractor_glyphs: int = 4  # grey digits on the background, outside every shape
    clutter_lines: int = 24  # grey line segments
    clutter_outlines: int = 8  # grey outlines of non-vocabulary forms (thin ellipses/rectangles, zigzags)
    noise_amplitude: int = 6  # +- grey per-pixel noise over the whole image (at most 100)
    image_format: str = "jpeg"  # "jpeg" (about 65 KB/image at 448 px) or "png" (lossless, about 4x larger)
    jpeg_quality: int = 90  # JPEG quality; chroma is not subsampled
    glyph_pool_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train/val/test share of handwriting

    def __post_init__(self) -> None:
        # Lists (from JSON or YAML) become tuples, so the config stays hashable and compares equal after a round trip.
        for name in ("shape_size", "glyph_size", "shapes", "colours", "question_types", "glyph_pool_fractions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.question_weights is not None:
            weights = tuple(self.question_weights)
            try:
                weights = tuple(float(w) for w in weights)
            except (TypeError, ValueError):
                pass  # refused below, by name
            object.__setattr__(self, "question_weights", weights)

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"BenchmarkCfg.{name}={getattr(self, name)!r}: {why}")

        # Counts and sizes are integers (2.5 objects was accepted; 1.5 questions per image failed deep in numpy).
        for name in ("image_size", "min_objects", "max_objects", "questions_per_image", "distractor_glyphs",
                     "clutter_lines", "clutter_outlines", "noise_amplitude", "jpeg_quality"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise bad(name, "need an integer")
        for name in ("shape_size", "glyph_size"):
            v = getattr(self, name)
            if len(v) != 2 or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) for x in v):
                raise bad(name, "need two integers (min, max)")

        for name, known in (("shapes", DEFAULT_SHAPES), ("colours", tuple(DEFAULT_COLOURS))):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values) or not set(values) <= set(known):
                raise bad(name, f"need distinct names from {list(known)}")
        qtypes = self.question_types  # a repeated type silently doubled its share
        if not qtypes or len(set(qtypes)) != len(qtypes) or not set(qtypes) <= set(QUESTION_TYPES):
            raise bad("question_types", f"need distinct names from {list(QUESTION_TYPES)}")
        # NaN, inf or a sum that overflows passed here and failed every row in numpy ("Probabilities contain NaN").
        if self.question_weights is not None and not (
            len(self.question_weights) == len(self.question_types)
            and all(isinstance(w, float) and 0 <= w < math.inf for w in self.question_weights)
            and 0 < sum(self.question_weights) < math.inf
        ):
            raise bad("question_weights", "need one finite non-negative weight per question type, not all zero")
        lo, hi = self.shape_size
        if not 8 <= lo <= hi:
            raise bad("shape_size", "need 8 <= min <= max")
        if not 4 <= self.glyph_size[0] <= self.glyph_size[1] <= lo // 2:
            raise bad("glyph_size", f"need 4 <= min <= max <= shape_size min / 2 = {lo // 2}")
        if self.grid < 2:
            raise bad("image_size", f"too small for shapes up to {hi} px (need room for a 2x2 grid)")
        # Unique digits (10), unique (colour, shape) pairs with at least one pair left absent for "no" answers.
        limit = min(10, len(self.shapes) * len(self.colours) - 1, self.grid**2)
        if not 1 <= self.min_objects <= self.max_objects <= limit:
            raise bad(
                "max_objects",
                f"need 1 <= min_objects ({self.min_objects}) <= max_objects <= {limit} (10 digits; "
                f"{len(self.shapes) * len(self.colours)} colour-shape pairs less one; a {self.grid}x{self.grid} "
                f"grid at image_size={self.image_size} with shapes up to {hi} px: shrink shape_size for small images)",
            )
        if self.questions_per_image < 1:
            raise bad("questions_per_image", "need >= 1")
        for name in ("distractor_glyphs", "clutter_lines", "clutter_outlines"):
            if getattr(self, name) < 0:
                raise bad(name, "need >= 0")
        if not 0 <= self.noise_amplitude <= 100:
            raise bad("noise_amplitude", "need 0..100")
        if self.image_format not in ("jpeg", "png"):
            raise bad("image_format", "need 'jpeg' or 'png'")
        if not 1 <= self.jpeg_quality <= 100:
            raise bad("jpeg_quality", "need 1..100")
        fractions = self.glyph_pool_fractions  # NaN or inf failed in round(), a string with a TypeError
        if len(fractions) != 3 or not all(
            isinstance(f, (int, float, np.integer, np.floating)) and not isinstance(f, bool) and 0 < f < math.inf
            for f in fractions
        ):
            raise bad("glyph_pool_fractions", "need three positive finite fractions (train, val, test)")
        empty = [(split, d) for split, parts in _glyph_pools(self.glyph_pool_fractions).items()
                 for d, part in enumerate(parts) if len(part) == 0]
        if empty:  # every split must hold every digit's handwriting (sampling from an empty pool failed obscurely)
            split, d = empty[0]
            raise bad("glyph_pool_fractions", f"leaves the {split} split no handwritten {d} (each digit has ~180 "
                                              "images); give every split a larger share")

    @property
    def grid(self) -> int:
        """Cells per side of the placement grid: one shape per cell keeps shapes apart."""
        return self.image_size // (self.shape_size[1] + 2 * _MARGIN)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> BenchmarkCfg:
        """Inverse of ``to_dict``; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown BenchmarkCfg field(s) {unknown}; known: {sorted(known)}")
        return cls(**params)


Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class SceneObject:
    """One coloured shape and the digit it holds."""

    shape: str
    colour: str
    digit: int  # the glyph's class, 0-9
    glyph_index: int  # row of sklearn's load_digits images
    box: Box  # shape bounding box [x0, y0, x1, y1), x1/y1 exclusive
    glyph_box: Box  # glyph placement, same convention; inside `box`


@dataclass(frozen=True)
class Distractor:
    """A grey digit drawn on the background, outside every shape."""

    digit: int
    glyph_index: int
    glyph_box: Box


@dataclass(frozen=True)
class Scene:
    """Everything needed to render an image and answer any question about it."""

    size: int  # canvas side
    background_seed: int  # seeds the texture and clutter
    objects: tuple[SceneObject, ...]
    distractors: tuple[Distractor, ...] = ()

    def to_json(self) -> str:
        """Compact JSON (stored in the ``scene`` column)."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Scene:
        """Inverse of ``to_json``."""
        raw = json.loads(text)
        return cls(
            size=raw["size"],
            background_seed=raw["background_seed"],
            objects=tuple(
                SceneObject(**{**obj, "box": tuple(obj["box"]), "glyph_box": tuple(obj["glyph_box"])})
                for obj in raw["objects"]
            ),
            distractors=tuple(Distractor(**{**d, "glyph_box": tuple(d["glyph_box"])}) for d in raw["distractors"]),
        )


@dataclass(frozen=True)
class Question:
    """One question about a scene, with its answer and the region that holds it."""

    question: str
    answer: str
    question_type: str
    target_box: tuple[int, ...]  # () when no single region holds the answer


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's bundled 8x8 digits as float32 ink in [0, 1], and their labels (1,797 images)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


@lru_cache(maxsize=4)
def _glyph_pools(fractions: tuple[float, float, float]) -> dict[str, tuple[np.ndarray, ...]]:
    """Disjoint handwriting pools per split: split -> (indices of digit 0, ..., indices of digit 9)."""
    _, labels = _digits()
    rng = np.random.default_rng(_GLYPH_POOL_SEED)
    total = sum(fractions)
    pools: dict[str, list[np.ndarray]] = {split: [] for split in SPLIT_IDS}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        # Stratified by class, so every split has every digit.
        cut1 = round(len(idx) * fractions[0] / total)
        cut2 = cut1 + round(len(idx) * fractions[1] / total)
        for split, part in zip(SPLIT_IDS, (idx[:cut1], idx[cut1:cut2], idx[cut2:])):
            pools[split].append(part)
    return {split: tuple(parts) for split, parts in pools.items()}


def _glyph_center(shape: str, box: Box) -> tuple[float, float]:
    """Where the glyph sits: the centre of the largest inscribed circle."""
    x0, y0, x1, y1 = box
    side = x1 - x0
    if shape == "triangle":
        # Upward isosceles triangle (base = height = side): inradius side / (1 + sqrt 5), centred above the base.
        return x0 + side / 2, y1 - side / (1 + math.sqrt(5))
    return x0 + side / 2, y0 + side / 2


def sample_scene(rng: np.random.Generator, cfg: BenchmarkCfg, split: str = "train") -> Scene:
    """Draw a random scene: shapes with unique (colour, shape) pairs and unique digits, plus distractor digits.

    Args:
        rng: Source of randomness (the scene is a pure function of its state).
        cfg: Generator parameters.
        split: Which handwriting pool the glyphs come from.

    Returns:
        The scene.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_IDS)}")
    pool = _glyph_pools(cfg.glyph_pool_fractions)[split]
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    grid = cfg.grid
    edges = np.linspace(0, cfg.image_size, grid + 1).round().astype(int)
    cells = rng.permutation(grid * grid)
    combos = rng.choice(len(cfg.shapes) * len(cfg.colours), size=n, replace=False)
    digits = rng.choice(10, size=n, replace=False)
    objects = []
    for k in range(n):
        row, col = divmod(int(cells[k]), grid)
        side = int(rng.integers(cfg.shape_size[0], cfg.shape_size[1] + 1))
        # Jitter inside the cell, _MARGIN px clear of its border: shapes in neighbouring cells never touch.
        x0 = int(edges[col] + _MARGIN + rng.integers(0, edges[col + 1] - edges[col] - side - 2 * _MARGIN + 1))
        y0 = int(edges[row] + _MARGIN + rng.integers(0, edges[row + 1] - edges[row] - side - 2 * _MARGIN + 1))
        box = (x0, y0, x0 + side, y0 + side)
        shape = cfg.shapes[int(combos[k]) // len(cfg.colours)]
        colour = cfg.colours[int(combos[k]) % len(cfg.colours)]
        glyph = int(rng.integers(cfg.glyph_size[0], min(cfg.glyph_size[1], side // 2) + 1))
        cx, cy = _glyph_center(shape, box)
        gx, gy = int(round(cx - glyph / 2)), int(round(cy - glyph / 2))
        candidates = pool[int(digits[k])]
        objects.append(
            SceneObject(
                shape=shape,
                colour=colour,
                digit=int(digits[k]),
                glyph_index=int(candidates[rng.integers(len(candidates))]),
                box=box,
                glyph_box=(gx, gy, gx + glyph, gy + glyph),
            )
        )
    distractors = []
    for k in range(n, min(n + cfg.distractor_glyphs, grid * grid)):
        row, col = divmod(int(cells[k]), grid)
        glyph = int(rng.integers(cfg.glyph_size[0], cfg.glyph_size[1] + 1))
        gx = int(edges[col] + rng.integers(0, edges[col + 1] - edges[col] - glyph + 1))
        gy = int(edges[row] + rng.integers(0, edges[row + 1] - edges[row] - glyph + 1))
        digit = int(rng.integers(10))
        candidates = pool[digit]
        distractors.append(
            Distractor(digit, int(candidates[rng.integers(len(candidates))]), (gx, gy, gx + glyph, gy + glyph))
        )
    return Scene(cfg.image_size, int(rng.integers(2**62)), tuple(objects), tuple(distractors))


def _shape_outline(shape: str, box: Box) -> list[tuple[float, float]] | None:
    """Polygon vertices of a shape inside its box (None for the circle, drawn as an ellipse)."""
    x0, y0, x1, y1 = box
    # PIL treats polygon/ellipse coordinates as inclusive, so the last pixel is x1 - 1.
    xa, ya, xb, yb = x0, y0, x1 - 1, y1 - 1
    xm, ym = (xa + xb) / 2, (ya + yb) / 2
    if shape == "circle":
        return None
    if shape == "square":
        return [(xa, ya), (xb, ya), (xb, yb), (xa, yb)]
    if shape == "triangle":
        return [(xm, ya), (xb, yb), (xa, yb)]
    if shape == "diamond":
        return [(xm, ya), (xb, ym), (xm, yb), (xa, ym)]
    if shape == "cross":
        q1, q3 = (xb - xa) / 4, 3 * (xb - xa) / 4
        return [
            (xa + q1, ya), (xa + q3, ya), (xa + q3, ya + q1), (xb, ya + q1), (xb, ya + q3), (xa + q3, ya + q3),
            (xa + q3, yb), (xa + q1, yb), (xa + q1, ya + q3), (xa, ya + q3), (xa, ya + q1), (xa + q1, ya + q1),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, fill: Any = None, outline: Any = None) -> None:
    points = _shape_outline(shape, box)
    if points is None:
        draw.ellipse([box[0], box[1], box[2] - 1, box[3] - 1], fill=fill, outline=outline, width=2)
    else:
        draw.polygon(points, fill=fill, outline=outline, width=2)


def _glyph_mask(glyph_index: int, side: int) -> Image.Image:
    """A digit upscaled (bilinear) to ``side`` x ``side`` as an 8-bit alpha mask."""
    images, _ = _digits()
    return Image.fromarray(np.rint(images[glyph_index] * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)


def _ink_for(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black ink on light fills, white on dark ones (Rec. 601 luma)."""
    luma = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (15, 15, 15) if luma > 140 else (245, 245, 245)


def _render_image(scene: Scene, cfg: BenchmarkCfg, *, glyphs: bool = True) -> Image.Image:
    """``render_scene`` as a PIL image: every full-canvas operation runs in PIL's C code."""
    size = scene.size
    rng = np.random.default_rng(scene.background_seed)
    # All random draws happen up front and in a fixed order, so `glyphs` cannot change the texture or noise.
    low = rng.integers(90, 180, size=(6, 6, 1)) + rng.integers(-12, 13, size=(6, 6, 3))  # grey + faint tint
    mid = rng.integers(128 - 18, 128 + 19, size=(max(size // 8, 1),) * 2)  # blotchy mid-frequency texture
    amp = cfg.noise_amplitude
    noise = rng.integers(0, 2 * amp + 1, size=(size, size), dtype=np.uint8) if amp else None
    lines = rng.integers(0, size, size=(cfg.clutter_lines, 4))
    line_grey = rng.integers(50, 210, size=cfg.clutter_lines)
    line_width = rng.integers(1, 4, size=cfg.clutter_lines)
    n_out = cfg.clutter_outlines
    outline_xy = rng.integers(0, size - cfg.shape_size[1], size=(n_out, 2))
    outline_long = rng.integers(cfg.shape_size[0], cfg.shape_size[1] + 1, size=n_out)
    outline_aspect = rng.uniform(0.25, 0.55, size=n_out)  # far from 1, so never a circle or square
    outline_vertical = rng.random(size=n_out) < 0.5
    outline_kind = rng.integers(3, size=n_out)  # 0 thin ellipse, 1 thin rectangle, 2 open zigzag
    outline_zigzag = rng.integers(0, cfg.shape_size[0], size=(n_out, 4, 2))
    outline_grey = rng.integers(40, 220, size=n_out)
    distractor_grey = rng.integers(30, 90, size=len(scene.distractors))

    image = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    for (xa, ya, xb, yb), grey, width in zip(lines, line_grey, line_width):
        draw.line([(int(xa), int(ya)), (int(xb), int(yb))], fill=(int(grey),) * 3, width=int(width))
    for k in range(n_out):
        x, y = int(outline_xy[k, 0]), int(outline_xy[k, 1])
        long, short = int(outline_long[k]), max(int(outline_long[k] * outline_aspect[k]), 4)
        w, h = (short, long) if outline_vertical[k] else (long, short)
        grey = (int(outline_grey[k]),) * 3
        if outline_kind[k] == 0:
            draw.ellipse([x, y, x + w, y + h], outline=grey, width=2)
        elif outline_kind[k] == 1:
            draw.rectangle([x, y, x + w, y + h], outline=grey, width=2)
        else:
            draw.line([(x + int(dx), y + int(dy)) for dx, dy in outline_zigzag[k]], fill=grey, width=2)
    for obj in scene.objects:
        _draw_shape(draw, obj.shape, obj.box, fill=DEFAULT_COLOURS[obj.colour])
    # Pasting a solid ink colour through the digit's mask is an alpha blend: out = ink * a + canvas * (1 - a).
    for distractor, grey in zip(scene.distractors, distractor_grey):
        x0, y0, x1, _ = distractor.glyph_box
        image.paste((int(grey),) * 3, (x0, y0), _glyph_mask(distractor.glyph_index, x1 - x0))
    if glyphs:
        for obj in scene.objects:
            x0, y0, x1, _ = obj.glyph_box
            image.paste(_ink_for(DEFAULT_COLOURS[obj.colour]), (x0, y0), _glyph_mask(obj.glyph_index, x1 - x0))
    # Texture and pixel noise go on last, over everything, as one grey layer centred on 128.
    layer = np.asarray(Image.fromarray(mid.astype(np.uint8)).resize((size, size), Image.BILINEAR))
    if noise is not None:
        layer = layer + (noise - np.uint8(amp))  # uint8 wrap-around cancels: layer stays within 128 +- (18 + amp)
    return ImageChops.add(image, Image.fromarray(layer).convert("RGB"), offset=-128)


def render_scene(scene: Scene, cfg: BenchmarkCfg, *, glyphs: bool = True) -> np.ndarray:
    """Draw a scene.

    The output is a pure function of ``scene`` and ``cfg``; ``glyphs=False`` draws the identical image without the
    shapes' digits (same texture, clutter and noise), which shows where the answer-bearing pixels are.

    Args:
        scene: What to draw.
        cfg: Clutter and noise parameters.
        glyphs: Whether to draw the digits inside the shapes (distractor digits are always drawn).

    Returns:
        An ``(size, size, 3)`` uint8 RGB array.
    """
    return np.asarray(_render_image(scene, cfg, glyphs=glyphs))


def _a(word: str) -> str:
    """The word with its indefinite article ("an orange", "an 8", "a 7")."""
    return f"an {word}" if word[0] in "aeiou8" else f"a {word}"


def make_question(
    scene: Scene, rng: np.random.Generator, cfg: BenchmarkCfg, question_type: str | None = None
) -> Question:
    """Ask one question about a scene.

    Args:
        scene: The scene to ask about.
        rng: Source of randomness.
        cfg: Gives the shape/colour vocabulary and the question-type weights.
        question_type: Force a type; ``None`` samples one with ``cfg.question_weights``.

    Returns:
        The question, its answer and the queried region.
    """
    if question_type is None:
        weights = np.asarray(cfg.question_weights or [1.0] * len(cfg.question_types), dtype=np.float64)
        question_type = cfg.question_types[int(rng.choice(len(weights), p=weights / weights.sum()))]
    if question_type not in QUESTION_TYPES:
        raise ValueError(f"unknown question type {question_type!r}; expected one of {list(QUESTION_TYPES)}")
    if question_type == "count":
        shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
        count = sum(obj.shape == shape for obj in scene.objects)
        return Question(f"how many {_PLURALS[shape]}?", str(count), "count", ())
    if question_type == "yesno":
        present = {(obj.colour, obj.shape): obj for obj in scene.objects}
        if rng.random() < 0.5:
            obj = scene.objects[int(rng.integers(len(scene.objects)))]
            return Question(f"is there {_a(obj.colour)} {obj.shape}?", "yes", "yesno", obj.box)
        absent = [(c, s) for s in cfg.shapes for c in cfg.colours if (c, s) not in present]
        colour, shape = absent[int(rng.integers(len(absent)))]
        return Question(f"is there {_a(colour)} {shape}?", "no", "yesno", ())
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    if question_type == "digit":
        return Question(f"what digit is in the {obj.colour} {obj.shape}?", str(obj.digit), "digit", obj.box)
    return Question(f"what colour is the shape holding {_a(str(obj.digit))}?", obj.colour, "colour", obj.box)


def make_question_about(
    scene: Scene, obj: SceneObject, rng: np.random.Generator, cfg: BenchmarkCfg, question_type: str
) -> Question:
    """Ask a question of type ``question_type`` about one chosen object of ``scene`` (its answer and box are that
    object's), e.g. two digit questions about two shapes of the same image.

    ``digit``, ``colour`` and ``yesno`` (a "yes" question: the object is there) are about one object; ``count`` is
    about the whole scene and is refused (asked of one object, it answered 1 where the image held 2).
    """
    if obj not in scene.objects:
        raise ValueError(f"obj {obj!r} is not one of the scene's objects")
    if question_type == "yesno":
        return Question(f"is there {_a(obj.colour)} {obj.shape}?", "yes", "yesno", obj.box)
    if question_type not in ("digit", "colour"):
        raise ValueError(f"make_question_about asks digit, colour or yesno questions about one object, got "
                         f"{question_type!r} (use make_question for questions about the whole scene)")
    return make_question(dataclasses.replace(scene, objects=(obj,)), rng, cfg, question_type)


def _encode(image: Image.Image, cfg: BenchmarkCfg) -> bytes:
    buffer = io.BytesIO()
    if cfg.image_format == "jpeg":
        # 4:4:4 chroma keeps the colour edges of 16 px glyphs and shapes crisp.
        image.save(buffer, format="JPEG", quality=cfg.jpeg_quality, subsampling=0)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def generate_rows(cfg: BenchmarkCfg, seed: int, split: str, start: int, stop: int) -> list[dict[str, Any]]:
    """Rows ``start .. stop - 1`` of a split, each a dict in the benchmark schema (image as encoded bytes).

    Args:
        cfg: Generator parameters.
        seed: Benchmark seed.
        split: ``"train"``, ``"val"`` or ``"test"``.
        start: First row index.
        stop: One past the last row index.

    Returns:
        The rows; row ``i`` is the same whatever ``start``/``stop`` were.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_IDS)}")
    per_image = cfg.questions_per_image
    rows = []
    for image_index in range(start // per_image, (stop - 1) // per_image + 1):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], image_index]))
        scene = sample_scene(rng, cfg, split)
        questions = [make_question(scene, rng, cfg) for _ in range(per_image)]
        lo, hi = image_index * per_image, (image_index + 1) * per_image
        if max(lo, start) >= min(hi, stop):
            continue
        image = {"bytes": _encode(_render_image(scene, cfg), cfg), "path": None}
        scene_json = scene.to_json()
        for index in range(max(lo, start), min(hi, stop)):
            q = questions[index - lo]
            rows.append(
                {
                    "image": image,
                    "question": q.question,
                    "answers": [q.answer] * N_ANSWERS,
                    "question_id": f"{split}-{index:07d}",
                    "question_type": q.question_type,
                    "target_box": list(q.target_box),
                    "scene": scene_json,
                }
            )
    return rows


def _generate_rows_task(args: tuple[BenchmarkCfg, int, str, int, int]) -> list[dict[str, Any]]:
    return generate_rows(*args)


def benchmark_features() -> datasets.Features:
    """Features of a benchmark split: the common schema plus ``target_box`` and ``scene``."""
    import datasets

    from training.data import schema_features

    return schema_features({"target_box": datasets.List(datasets.Value("int32")), "scene": datasets.Value("string")})


def _chunks(
    cfg: BenchmarkCfg, seed: int, split: str, size: int, pool: multiprocessing.pool.Pool | None
) -> Iterator[list[dict[str, Any]]]:
    """A split's rows in order, in chunks, rendered on ``pool`` if given."""
    tasks = [(cfg, seed, split, start, min(start + _CHUNK, size)) for start in range(0, size, _CHUNK)]
    return map(_generate_rows_task, tasks) if pool is None else pool.imap(_generate_rows_task, tasks)


def _write_split(
    path: Path, cfg: BenchmarkCfg, seed: int, split: str, size: int, pool: multiprocessing.pool.Pool | None
) -> None:
    """Stream a split into one Arrow IPC file (the format ``datasets`` memory-maps), chunk by chunk."""
    import pyarrow as pa

    features = benchmark_features()
    schema = features.arrow_schema  # carries the datasets feature metadata (Image, List, ...)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        with tqdm(total=size, desc=f"rendering {split}", unit="img") as progress:
            for chunk in _chunks(cfg, seed, split, size, pool):
                columns = features.encode_batch({name: [row[name] for row in chunk] for name in features})
                writer.write_table(pa.Table.from_pydict(columns, schema=schema))
                progress.update(len(chunk))


def _counts(ds: datasets.Dataset) -> dict[str, Any]:
    types = list(ds["question_type"])
    answers = [a[0] for a in ds["answers"]]
    per_type: dict[str, Counter[str]] = {}
    for qtype, answer in zip(types, answers):
        per_type.setdefault(qtype, Counter())[answer] += 1
    return {
        "question_type_counts": dict(sorted(Counter(types).items())),
        "answer_counts": {t: dict(sorted(c.items())) for t, c in sorted(per_type.items())},
        # Accuracy of always giving a type's most common answer: the floor any model must beat.
        "majority_baseline": {t: max(c.values()) / sum(c.values()) for t, c in sorted(per_type.items())},
    }


def make_benchmark(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
    cfg: BenchmarkCfg | None = None,
    workers: int = 1,
    overwrite: bool = False,
    extra_manifest: Mapping[str, Any] | None = None,
) -> datasets.DatasetDict:
    """Generate the benchmark and save it with ``DatasetDict.save_to_disk``, plus manifests.

    Writes ``out_dir/{split}/`` (arrow shards), ``out_dir/dataset_dict.json``, ``out_dir/manifest.json`` (seed,
    version, generator parameters, sizes and per-split counts) and ``out_dir/{split}/manifest.json`` (the same
    for one split). The directory appears atomically: it is built under a temporary name and renamed.

    Args:
        out_dir: Target directory; must not exist unless ``overwrite``.
        seed: Benchmark seed; the same seed, sizes and ``cfg`` give identical data.
        sizes: Rows per split, a subset of ``{"train", "val", "test"}``; defaults to ``DEFAULT_SIZES``.
        cfg: Generator parameters; defaults to ``BenchmarkCfg()``.
        workers: Rendering processes (the data do not depend on it).
        overwrite: Replace an existing ``out_dir``.
        extra_manifest: Extra JSON-ready entries for the root manifest (e.g. the command line).

    Returns:
        The saved splits, loaded back from ``out_dir``.

    Raises:
        ValueError: For unknown split names, non-positive or non-integer sizes, a negative seed, ``workers < 1``,
            or an existing ``out_dir`` without ``overwrite``.
    """
    import datasets

    cfg = cfg or BenchmarkCfg()
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown = sorted(set(sizes) - set(SPLIT_IDS))
    if unknown or not sizes:
        raise ValueError(f"split names {unknown or '(none)'} invalid; choose from {list(SPLIT_IDS)}")
    for split, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size of split {split!r} must be a positive integer, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    workers = int(workers)  # a NumPy integer, as sizes and seed accept (it was refused as not a positive integer)
    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite:
        raise ValueError(f"output directory {str(out)!r} exists; pass overwrite=True (--overwrite) to replace it")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        # One pool for all splits; spawn, not fork, because the parent may hold threads (datasets, tqdm).
        pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
        try:
            for split in (s for s in SPLIT_IDS if s in sizes):
                _write_split(staging / f"{split}.arrow", cfg, int(seed), split, int(sizes[split]), pool)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        info = datasets.DatasetInfo(description="ARR-COC generated VQA benchmark", features=benchmark_features())
        splits = {
            split: datasets.Dataset.from_file(str(staging / f"{split}.arrow"), info=info, split=split)
            for split in SPLIT_IDS
            if split in sizes
        }
        datasets.DatasetDict(splits).save_to_disk(str(staging / "data"))

        root_manifest: dict[str, Any] = {
            "name": "arr-coc-bench",
            "version": BENCHMARK_VERSION,
            "seed": int(seed),
            "sizes": {split: len(ds) for split, ds in splits.items()},
            "generator": cfg.to_dict(),
            "columns": list(benchmark_features()),
            "target_box": "[x0, y0, x1, y1) in pixels, x1/y1 exclusive; [] when no single region holds the answer",
            "answers": f"{N_ANSWERS} identical strings per row (VQAv2 layout; score with eval.metrics.vqa_accuracy)",
            "splits": {},
            **dict(extra_manifest or {}),
        }
        for split, ds in splits.items():
            split_manifest = {
                "split": split,
                "size": len(ds),
                "seed_sequence": [int(seed), SPLIT_IDS[split], "<image index>"],
                "handwriting_pool": sum(len(p) for p in _glyph_pools(cfg.glyph_pool_fractions)[split]),
                **_counts(ds),
            }
            root_manifest["splits"][split] = split_manifest
            per_split = {"version": BENCHMARK_VERSION, "seed": int(seed), "generator": cfg.to_dict(), **split_manifest}
            (staging / "data" / split / "manifest.json").write_text(json.dumps(per_split, indent=2) + "\n")
        (staging / "data" / "manifest.json").write_text(json.dumps(root_manifest, indent=2) + "\n")
        del splits  # release the memory-mapped staging files before moving and deleting them
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging / "data", out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return datasets.load_from_disk(str(out))
