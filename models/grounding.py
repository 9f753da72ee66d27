"""Grounding supervision: teach ARR-COC's allocation where the question points, from region annotations.

The CPU pilot (README, "CPU pilots") found the trained allocation query-blind: neither the straight-through gradient
nor relevance distillation (:mod:`models.relevance`) grounds the query while the LLM itself cannot find the queried
region. Where a dataset says which region a question is about, that is a direct target. The project's benchmark
stores it as ``target_box`` (``[x0, y0, x1, y1)`` pixels of the queried shape); GQA's annotations, TextVQA's OCR
boxes and referring-expression data carry the same kind of label.

For a box, the target distribution over the K patches is the share of the box's area that falls in each patch cell
(the patch grid tiles the resized image, row-major, as :mod:`arr_coc.realizing` lays patches out). The loss is the
cross-entropy ``-Σ_k p_k log softmax(u)_k`` between it and ARR-COC's utility ``u`` (the same form as relevance
distillation), over the rows that have a box. Its gradient reaches the query path of ``knowing`` (participatory
cross-attention) and the ``balancing`` weights; the other two scores do not depend on the question, so only the
query path can put the utility on a different region for a different question.

This is supervision the task loss does not have: report it as such (the benchmark trains the grounded model as its
own method, ``arr_coc_grounded``, next to the unsupervised ones). At test time nothing reads the boxes.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from models.relevance import soft_cross_entropy

__all__ = ["batch_boxes", "box_patch_mass", "box_patches", "grounding_loss", "image_size", "normalised_boxes"]


def normalised_boxes(boxes: Sequence[Sequence[float] | None], sizes: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Pixel boxes ``[x0, y0, x1, y1)`` of ``(W, H)`` images → boxes in ``[0, 1]`` image coordinates, and which rows
    have one.

    A row with ``None`` or ``[]`` has no box (``valid`` False, zeros). A box that is not 4 finite numbers with
    ``0 <= x0 < x1 <= W`` and ``0 <= y0 < y1 <= H`` raises ``ValueError`` naming the row.

    Returns:
        boxes (B, 4) float32 ``[x0, y0, x1, y1]`` divided by ``(W, H, W, H)``; valid (B,) bool.
    """
    if len(boxes) != len(sizes):
        raise ValueError(f"{len(boxes)} boxes for {len(sizes)} images")
    out = torch.zeros(len(boxes), 4, dtype=torch.float32)
    valid = torch.zeros(len(boxes), dtype=torch.bool)
    for i, (box, (w, h)) in enumerate(zip(boxes, sizes)):
        if box is None or len(box) == 0:
            continue
        if len(box) != 4:
            raise ValueError(f"row {i}: a box is [x0, y0, x1, y1], got {list(box)!r}")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise ValueError(f"row {i}: box {list(box)!r} is not finite")
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ValueError(f"row {i}: box {list(box)!r} is empty or outside the {w}x{h} image")
        out[i] = torch.tensor([x0 / w, y0 / h, x1 / w, y1 / h])
        valid[i] = True
    return out, valid


def box_patch_mass(boxes: Tensor, patch_grid: tuple[int, int]) -> Tensor:
    """Share of each box's area inside each patch cell of a ``(Gh, Gw)`` grid tiling ``[0, 1]²`` row-major.

    Shapes:
        boxes: (B, 4) ``[x0, y0, x1, y1]`` in [0, 1] (x along the width); rows of zeros give all-zero rows
        returns: (B, K) float32, K = Gh·Gw; a non-empty box's row sums to 1
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4), got {tuple(boxes.shape)}")
    gh, gw = (int(v) for v in patch_grid)
    b = boxes.float()
    ys = torch.linspace(0, 1, gh + 1, device=b.device)
    xs = torch.linspace(0, 1, gw + 1, device=b.device)
    # Overlap of [y0, y1) with each row band and of [x0, x1) with each column band; the product is the area.
    oy = (torch.minimum(b[:, 3:4], ys[1:]) - torch.maximum(b[:, 1:2], ys[:-1])).clamp_min(0)  # (B, Gh)
    ox = (torch.minimum(b[:, 2:3], xs[1:]) - torch.maximum(b[:, 0:1], xs[:-1])).clamp_min(0)  # (B, Gw)
    area = (oy[:, :, None] * ox[:, None, :]).flatten(1)  # (B, K)
    return area / area.sum(1, keepdim=True).clamp_min(torch.finfo(area.dtype).tiny)


def box_patches(boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]],
                patch_grid: tuple[int, int]) -> Tensor:
    """Which patches of a ``(Gh, Gw)`` grid each pixel box ``[x0, y0, x1, y1)`` of a ``(W, H)`` image overlaps.

    Shapes: returns (B, K) bool (an empty box, ``[]``, overlaps none).
    """
    _, valid = normalised_boxes(boxes, sizes)  # checks every box
    gh, gw = (int(v) for v in patch_grid)
    px = torch.tensor([[float(v) for v in box] if ok else [0.0] * 4 for box, ok in zip(boxes, valid.tolist())],
                      dtype=torch.float64).view(-1, 4)
    wh = torch.tensor([[float(w), float(h)] for w, h in sizes], dtype=torch.float64).view(-1, 2)
    # In pixels, not through the normalised float32 box (x1 = 200 of W = 300 rounds above the grid line 2/3 there and
    # overlapped the next column by ~6e-8): column c spans [c·W/Gw, (c+1)·W/Gw), which [x0, x1) overlaps iff
    # x0·Gw < (c+1)·W and x1·Gw > c·W, exact in float64 for pixel coordinates.
    c, r = torch.arange(gw, dtype=torch.float64), torch.arange(gh, dtype=torch.float64)
    ox = (px[:, 0:1] * gw < (c + 1) * wh[:, 0:1]) & (px[:, 2:3] * gw > c * wh[:, 0:1])  # (B, Gw)
    oy = (px[:, 1:2] * gh < (r + 1) * wh[:, 1:2]) & (px[:, 3:4] * gh > r * wh[:, 1:2])  # (B, Gh)
    return (oy[:, :, None] & ox[:, None, :]).flatten(1) & valid[:, None]


def grounding_loss(utility: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy ``-Σ_k p_k log softmax(u)_k`` over the rows with a box, and how many there were.

    Shapes: utility (B, K), target (B, K), valid (B,) → (scalar sum, scalar count).
    """
    if utility.shape != target.shape or valid.shape != utility.shape[:1]:
        raise ValueError(f"utility {tuple(utility.shape)}, target {tuple(target.shape)} and valid "
                         f"{tuple(valid.shape)} disagree in shape")
    ce = soft_cross_entropy(utility, target)  # (B,)
    v = valid.to(utility.device)
    return torch.where(v, ce, torch.zeros_like(ce)).sum(), v.sum().float()


def image_size(img: Any) -> tuple[int, int]:
    """``(W, H)`` of a PIL image or an HWC array."""
    return tuple(img.size) if hasattr(img, "size") and not hasattr(img, "shape") else (img.shape[1], img.shape[0])


def batch_boxes(rows: Sequence[Any]) -> dict[str, Tensor]:
    """The collator's grounding fields for rows that may carry ``target_box`` (benchmark rows do).

    Returns ``{}`` when no row has the column; otherwise ``target_box`` (B, 4) normalised and
    ``target_box_valid`` (B,) bool (see :func:`normalised_boxes`).
    """
    if not any("target_box" in r for r in rows):
        return {}
    boxes, valid = normalised_boxes([r.get("target_box") for r in rows], [image_size(r["image"]) for r in rows])
    return {"target_box": boxes, "target_box_valid": valid}
