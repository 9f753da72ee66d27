"""Pretrain a model preset's open_clip vision tower on the benchmark's scenes, and save it as an open_clip checkpoint.

    python -m scripts.pretrain_vision --data /tmp/smallb --preset small --steps 1500 --out /tmp/small_vit.safetensors
    python -m training.train --config configs/train/small.yaml model.vision.pretrained=/tmp/small_vit.safetensors ...

Why: no model hub is reachable here, so every tower starts from random weights, and a VLM trained from scratch for a few
thousand steps never learns to read the benchmark's digits (README and results/pilots.md: CPU pilots and the GPU run):
the fine-detail comparison the benchmark is built for cannot happen. Real VLMs start from a pretrained tower. This
stands in for one: it trains the tower alone on what a pretrained tower would already know about these images, from the
generator's own scene records of the **train** split (never the test split's): for every object, the digit drawn in it
(features pooled over the tokens its glyph box covers), its colour and its shape (pooled over its box). The result is
written with every key of the open_clip model, so ``vision.pretrained=<file>`` loads it through
``open_clip.create_model`` exactly as it would load downloaded weights. The test split's objects give the held-out
accuracies it prints.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["main", "object_targets", "pool_boxes"]


def object_targets(rows: Sequence[dict[str, Any]], colours: Sequence[str], shapes: Sequence[str]) -> dict[str, Tensor]:
    """Per-object supervision from the rows' ``scene`` records: image index, glyph box and box (normalised), digit,
    colour and shape ids. Raises ``ValueError`` for a row without a scene or an unknown colour/shape."""
    img, gbox, box, digit, colour, shape = [], [], [], [], [], []
    for i, r in enumerate(rows):
        if not r.get("scene"):
            raise ValueError(f"row {r.get('question_id', i)!r} has no scene record (a generated benchmark row has one)")
        scene = json.loads(r["scene"]) if isinstance(r["scene"], str) else r["scene"]
        size = float(scene["size"])
        for o in scene["objects"]:
            if o["colour"] not in colours or o["shape"] not in shapes:
                raise ValueError(f"row {i}: object {o['shape']}/{o['colour']} outside {list(shapes)} / {list(colours)}")
            img.append(i)
            gbox.append([v / size for v in o["glyph_box"]])
            box.append([v / size for v in o["box"]])
            digit.append(int(o["digit"]))
            colour.append(colours.index(o["colour"]))
            shape.append(shapes.index(o["shape"]))
    return {"image": torch.tensor(img, dtype=torch.long), "glyph_box": torch.tensor(gbox, dtype=torch.float32),
            "box": torch.tensor(box, dtype=torch.float32), "digit": torch.tensor(digit, dtype=torch.long),
            "colour": torch.tensor(colour, dtype=torch.long), "shape": torch.tensor(shape, dtype=torch.long)}


def pool_boxes(features: Tensor, image: Tensor, boxes: Tensor) -> Tensor:
    """Mean of the token features whose centres lie in each box (and always the token holding the box's centre).

    Shapes:
        features: (B, D, Hg, Wg); image: (N,) indices into B; boxes: (N, 4) normalised [x0, y0, x1, y1]
        returns: (N, D)
    """
    _, _, hg, wg = features.shape
    cy = (torch.arange(hg, device=features.device, dtype=torch.float32) + 0.5) / hg
    cx = (torch.arange(wg, device=features.device, dtype=torch.float32) + 0.5) / wg
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    inside = (cx[None, None, :] >= x0) & (cx[None, None, :] < x1) & (cy[None, :, None] >= y0) & (cy[None, :, None] < y1)
    mid_r = ((boxes[:, 1] + boxes[:, 3]) / 2 * hg).long().clamp(0, hg - 1)
    mid_c = ((boxes[:, 0] + boxes[:, 2]) / 2 * wg).long().clamp(0, wg - 1)
    inside[torch.arange(len(boxes)), mid_r, mid_c] = True
    w = inside.to(features.dtype)  # (N, Hg, Wg)
    f = features[image]  # (N, D, Hg, Wg)
    return (f * w[:, None]).sum((2, 3)) / w.sum((1, 2))[:, None]


class _Heads(nn.Module):
    def __init__(self, dim: int, n_colours: int, n_shapes: int):
        super().__init__()
        self.digit, self.colour, self.shape = nn.Linear(dim, 10), nn.Linear(dim, n_colours), nn.Linear(dim, n_shapes)

    def forward(self, features: Tensor, t: dict[str, Tensor]) -> dict[str, Tensor]:
        g = pool_boxes(features, t["image"], t["glyph_box"])
        b = pool_boxes(features, t["image"], t["box"])
        return {"digit": self.digit(g), "colour": self.colour(b), "shape": self.shape(b)}


def _batches(ds, batch: int, rng: torch.Generator):
    while True:
        for idx in torch.randperm(len(ds), generator=rng).split(batch):
            if len(idx) == batch:
                yield [ds[int(i)] for i in idx]


@torch.no_grad()
def _evaluate(tower, heads, processor, ds, colours, shapes, n: int, batch: int) -> dict[str, float]:
    correct = {"digit": 0, "colour": 0, "shape": 0}
    total = 0
    for start in range(0, min(n, len(ds)), batch):
        rows = [ds[i] for i in range(start, min(start + batch, n, len(ds)))]
        dev = next(heads.parameters()).device
        t = {k: v.to(dev) for k, v in object_targets(rows, colours, shapes).items()}
        out = heads(tower.token_grid_features(processor.preprocess_images([r["image"] for r in rows]).to(dev)), t)
        for k in correct:
            correct[k] += int((out[k].argmax(-1) == t[k]).sum())
        total += len(t["digit"])
    return {k: v / max(total, 1) for k, v in correct.items()} | {"objects": total}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m scripts.pretrain_vision", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a generated benchmark (scripts/make_benchmark.py)")
    p.add_argument("--preset", default="small", help="model preset whose vision tower is trained (configs/models/)")
    p.add_argument("--out", required=True, help="checkpoint file to write (.safetensors)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32, help="images per step (each holds several objects)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-images", type=int, default=300, help="test-split images for the held-out accuracies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda")
    a = p.parse_args(argv)
    if a.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {a.device!r}")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch.cuda.is_available() is False")
    device = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    if not str(a.out).endswith(".safetensors"):
        raise ValueError(f"--out must end in .safetensors (open_clip picks the loader by suffix), got {a.out!r}")
    for flag, v in (("--steps", a.steps), ("--batch-size", a.batch_size), ("--eval-images", a.eval_images)):
        if v < 1:
            raise ValueError(f"{flag} must be >= 1, got {v}")
    if not (math.isfinite(a.lr) and a.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {a.lr}")
    import datasets
    from safetensors.torch import save_file
    from tqdm import tqdm

    from models.builders import build_model, load_model_cfg
    from models.vision import OpenClipVision, create_open_clip, weights_follow
    from training.benchmark import DEFAULT_COLOURS, DEFAULT_SHAPES

    cfg = load_model_cfg(a.preset)
    vc = cfg.vision
    if vc.backend != "open_clip":
        raise ValueError(f"preset {a.preset!r} has vision.backend={vc.backend!r}; this script trains open_clip towers")
    torch.manual_seed(a.seed)
    with weights_follow():  # random init is the point here
        clip = create_open_clip(vc.model_name, pretrained=vc.pretrained, image_size=vc.image_size)
        _, processor = build_model(a.preset)
    # prune=False: the whole open_clip model is saved, so open_clip's strict loader finds every key.
    tower = OpenClipVision(clip.visual, patch_grid=cfg.arr_coc["patch_grid"], fine_grid=vc.fine_grid,
                           feature_layer=vc.feature_layer, prune=False)
    colours, shapes = list(DEFAULT_COLOURS), list(DEFAULT_SHAPES)
    heads = _Heads(tower.feature_dim, len(colours), len(shapes))
    tower.to(device)
    heads.to(device)
    root = datasets.load_from_disk(str(a.data))
    if "train" not in root or "scene" not in root["train"].column_names:
        raise ValueError(f"{a.data} is not a generated benchmark with a train split and scene records")
    train, test = root["train"], root["test"] if "test" in root else None
    if len(train) < a.batch_size:  # only full batches are drawn: a smaller split would never yield one
        raise ValueError(f"--batch-size {a.batch_size} is larger than the train split ({len(train)} rows of {a.data}); "
                         "pass a smaller --batch-size or a larger benchmark")
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    warm = max(1, a.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
    batches = _batches(train, a.batch_size, torch.Generator().manual_seed(a.seed))
    t0, log = time.perf_counter(), []
    bar = tqdm(range(a.steps), desc="pretrain vision", dynamic_ncols=True)
    for step in bar:
        rows = next(batches)
        t = {k: v.to(device) for k, v in object_targets(rows, colours, shapes).items()}
        pixels = processor.preprocess_images([r["image"] for r in rows]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = heads(tower.token_grid_features(pixels), t)
        out = {k: v.float() for k, v in out.items()}
        losses = {k: F.cross_entropy(out[k], t[k]) for k in out}
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        acc = float((out["digit"].argmax(-1) == t["digit"]).float().mean())
        log.append({"step": step + 1, "loss": float(loss.detach()), "digit_acc": acc})
        if (step + 1) % 10 == 0 or step + 1 == a.steps:
            bar.set_postfix(loss=f"{log[-1]['loss']:.3f}", digit=f"{acc:.2f}")
    result: dict[str, Any] = {"out": str(a.out), "steps": a.steps, "seconds": round(time.perf_counter() - t0, 1),
                              "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"]}
    if test is not None:
        tower.eval()
        result["test"] = _evaluate(tower, heads, processor, test, colours, shapes, a.eval_images, a.batch_size)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}, str(tmp),
              metadata={"source": "scripts/pretrain_vision.py", "preset": a.preset, "data": str(a.data),
                        "steps": str(a.steps)})
    tmp.replace(out)  # atomic: a killed run never leaves a half-written checkpoint under the final name
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
