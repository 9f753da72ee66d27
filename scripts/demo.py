"""The main job: show query-aware token budgets. Two modes, chosen by whether trained weights are present.

    make demo                       # or: python -m scripts.demo --out outputs/demo

**Trained model** (``--weights``; by default the first of ``weights/arr_coc_small``, the grounded `small` model trained
on CPU from a frozen pretrained-style tower at 25% of the tokens, then fine-tuned for every budget (``--token-fraction``
picks one), the one model so far that reads the digits, and ``weights/arr_coc_bench``,
the ``bench`` model a GPU session exports; both ship in the repository, written by ``scripts/export_model.py`` from
the accuracy benchmark's ARR-COC run): renders test scenes of the generated VQA benchmark, asks two questions about two
different shapes of the same image, and for each prints the model's answer, the right answer and the share of the
visual tokens that landed in the queried shape's box, and draws the per-patch budgets over the image, one panel per
question (``outputs/demo/trained_image*.png``). The same image with two questions gets two heat-maps.

**Untrained layer** (when no weights are present): runs the ``ArrCoc`` layer alone (default ARR-COC-0-1 preset:
K=200, 13,200 tokens, 64..400) on generated images with colour questions ("where is the red shape?" ...), prints a
per-patch budget table and writes ``outputs/demo/budgets_image*.png``. No weights are downloaded: the features come
from a fixed, hand-built extractor (mean colour, similarity to a colour palette, edge energy, and fixed random
projections of each cell's pixels), and a query is the palette direction of its colour in that same feature space.
The participatory projections start as identities (``identity_init=True``), so before any training the query's
relevance is plain feature-query similarity; the balancing weights favour it (2.0 vs 0.5) so the effect is visible.
Everything is deterministic (seeded).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from arr_coc import ArrCoc

PALETTE = {  # name -> RGB in [0, 1]
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.1), "magenta": (0.85, 0.2, 0.8), "cyan": (0.1, 0.8, 0.85),
}
GRID = (10, 20)  # K = 200 patches, as in the preset
PATCH_PX = 32  # each patch is 32x32 px, so images are 320 x 640
FINE = 8  # fine grid per patch: 8x8 cells of 4x4 px (budgets up to 400 > 64 cells use interpolation)
D = 32  # feature width


def make_image(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """A cluttered grey texture with a few coloured shapes; returns (H, W, 3) float image and shape records."""
    h, w = GRID[0] * PATCH_PX, GRID[1] * PATCH_PX
    img = 0.45 + 0.12 * rng.standard_normal((h, w, 1)).repeat(3, -1)
    yy, xx = np.mgrid[0:h, 0:w]
    img += 0.08 * np.sin(xx / rng.uniform(5, 15))[..., None] * np.cos(yy / rng.uniform(5, 15))[..., None]
    shapes = []
    for colour in rng.choice(list(PALETTE), size=4, replace=False):
        r = rng.integers(14, 30)
        cy, cx = rng.integers(r, h - r), rng.integers(r, w - r)
        kind = rng.choice(["circle", "square", "triangle"])
        if kind == "circle":
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        elif kind == "square":
            m = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        else:
            m = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)
        img[m] = PALETTE[colour]
        shapes.append({"colour": str(colour), "kind": str(kind), "centre": (int(cy), int(cx)), "radius": int(r)})
    return np.clip(img, 0, 1).astype(np.float32), shapes


class HandFeatures:
    """Fixed per-cell features (no learning, no download): colour, palette similarity, edges, random projections."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.pal = torch.tensor(list(PALETTE.values()))  # (P, 3)
        cell = PATCH_PX // FINE
        self.proj = torch.randn(cell * cell * 3, D - 3 - len(PALETTE) - 1, generator=g) / (cell * np.sqrt(3))

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → (B, K, FINE, FINE, D)."""
        b = pixels.shape[0]
        cell = PATCH_PX // FINE
        x = pixels.unfold(2, cell, cell).unfold(3, cell, cell)  # (B, 3, H/c, W/c, c, c)
        x = x.permute(0, 2, 3, 1, 4, 5)  # (B, Hc, Wc, 3, c, c)
        mean = x.mean(dim=(-1, -2))  # (B, Hc, Wc, 3)
        dist = torch.cdist(mean.reshape(b, -1, 3), self.pal[None].expand(b, -1, -1)).reshape(*mean.shape[:3], -1)
        palette = torch.exp(-(dist**2) / 0.02)  # similarity to each palette colour
        edges = x.std(dim=(-1, -2)).mean(-1, keepdim=True)
        rand = torch.tanh(x.flatten(3) @ self.proj)
        f = torch.cat([mean, 3 * palette, edges, rand], dim=-1)  # (B, Hc, Wc, D)
        gh, gw = GRID
        f = f.reshape(b, gh, FINE, gw, FINE, D).permute(0, 1, 3, 2, 4, 5)  # (B, Gh, Gw, FINE, FINE, D)
        return f.reshape(b, gh * gw, FINE, FINE, D)

    def query(self, colour: str) -> torch.Tensor:
        """The query vector for a colour: its palette channel in feature space. Shape (D,)."""
        q = torch.zeros(D)
        q[3 + list(PALETTE).index(colour)] = 3.0
        return q


def gini(x: np.ndarray) -> float:
    x = np.sort(x.astype(np.float64))
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def patches_of(shape: dict) -> set[int]:
    """Patch indices whose 32 px square overlaps the shape's bounding box."""
    cy, cx, r = *shape["centre"], shape["radius"]
    rows = range(max(0, (cy - r) // PATCH_PX), min(GRID[0] - 1, (cy + r) // PATCH_PX) + 1)
    cols = range(max(0, (cx - r) // PATCH_PX), min(GRID[1] - 1, (cx + r) // PATCH_PX) + 1)
    return {rr * GRID[1] + cc for rr in rows for cc in cols}


def draw_budgets(ax, image, budgets: np.ndarray, box=(), *, numbers: bool = False):
    """Per-patch ``budgets`` (Gh, Gw) as a heat-map over ``image`` (PIL or (H, W, 3) array), the queried ``box``
    ``[x0, y0, x1, y1)`` outlined in cyan when it has four values, and with ``numbers`` each patch's budget written
    in it; axes off. Returns the heat-map (for a colour bar)."""
    from matplotlib.patches import Rectangle

    h, w = np.shape(image)[:2]
    ax.imshow(image)
    im = ax.imshow(budgets, cmap="magma", alpha=0.55, extent=(0, w, h, 0), interpolation="nearest")
    if numbers:
        gh, gw = budgets.shape
        for (r, c), v in np.ndenumerate(budgets):
            ax.text((c + 0.5) * w / gw, (r + 0.5) * h / gh, f"{int(v)}", ha="center", va="center", color="white",
                    fontsize=7)
    if len(box) == 4:
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="cyan", linewidth=1.5))
    ax.axis("off")
    return im


_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
# Searched in order: the grounded `small` model trained on CPU from a frozen pretrained-style tower (README, "On the
# CPU: `small` scale, frozen pretrained-style tower"; seed 0, 10,000 steps at 25%, then fine-tuned for every budget),
# which reads the digits, then the `bench` model from a GPU session (scripts/gpu_accuracy_session.sh), which does not
# yet.
DEFAULT_WEIGHTS = (_WEIGHTS / "arr_coc_small", _WEIGHTS / "arr_coc_bench")


def trained_demo(weights: Path, out: Path, images: int, seed: int, token_fraction: float | None = None) -> dict:
    """Two questions about two shapes of each benchmark test image, answered by the trained model; see the docstring.

    ``token_fraction``: run at that fraction of the full token count instead of the model's own budget (for a model
    fine-tuned for several budgets, README "One model for every budget").

    Returns ``{"rows": [...], "pngs": [...]}``, one row per (image, question).
    """
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.baselines import create_method
    from eval.run_eval import target_fraction
    from models.grounding import box_patches
    from models.pretrained import load_pretrained
    from training.benchmark import BenchmarkCfg, make_question_about, render_scene, sample_scene

    model, processor = load_pretrained(weights)
    info = json.loads((weights / "config.json").read_text())
    gen = dict(info.get("metadata", {}).get("benchmark") or {})
    gen.setdefault("image_size", processor.image_size[0])
    bcfg = BenchmarkCfg.from_dict(gen)
    method = create_method("arr_coc", model, token_fraction)
    processor.budget = method.placeholders  # <image> expands to the tokens this budget feeds the LLM
    gh, gw = model.vision.patch_grid
    print(f"trained model: {weights} (step {info.get('metadata', {}).get('step')}), {method.num_tokens} of "
          f"{method.full_tokens} visual tokens, {gh}x{gw} patches, allocator {model.arr_coc.attending.registry_name}")
    header = (f"{'image':>5}  {'question':<40} {'answer':>6} {'model':>6}  {'tokens in box':>13}  {'box area':>8}  "
              f"{'tokens in box patches':>21}  {'their area':>10}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(seed)
    rows, pngs = [], []
    for i in range(images):
        scene = sample_scene(rng, bcfg, "test")
        while len(scene.objects) < 2:
            scene = sample_scene(rng, bcfg, "test")
        img = render_scene(scene, bcfg)
        h, w = img.shape[:2]
        picks = rng.choice(len(scene.objects), size=2, replace=False)
        fig, axes = plt.subplots(1, 2, figsize=(10.5, 5))
        for ax, j in zip(axes, picks):
            q = make_question_about(scene, scene.objects[int(j)], rng, bcfg, "digit")
            batch = processor([img], [q.question])
            with torch.no_grad():
                res = method.generate(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                                      query_input_ids=batch["query_input_ids"],
                                      query_attention_mask=batch["query_attention_mask"], max_new_tokens=8,
                                      do_sample=False, eos_token_id=processor.tokenizer.eos_token_id)
            pred = processor.batch_decode(res.sequences)[0]
            share = target_fraction(res.positions[0], q.target_box, (w, h))
            x0, y0, x1, y1 = q.target_box
            area = (x1 - x0) * (y1 - y0) / (w * h)
            # The patches the box overlaps: the unit the allocator decides on (a tight box leaves most token centres
            # of an overlapped patch outside it, so "tokens in box" moves in coarse steps on small grids).
            touched = box_patches([q.target_box], [(w, h)], (gh, gw))[0]
            bud = res.budgets[0].double()
            p_share, p_area = float(bud[touched].sum() / bud.sum()), float(touched.double().mean())
            rows.append({"image": i, "question": q.question, "answer": q.answer, "prediction": pred,
                         "tokens_in_box": share, "box_area": area, "tokens_in_box_patches": p_share,
                         "box_patches_area": p_area, "budgets": res.budgets[0].tolist()})
            print(f"{i:>5}  {q.question:<40} {q.answer:>6} {pred:>6}  {share:>13.1%}  {area:>8.1%}  {p_share:>21.1%}  "
                  f"{p_area:>10.1%}")
            im = draw_budgets(ax, img, res.budgets[0].reshape(gh, gw).float().numpy(), q.target_box)
            ax.set_title(f"{q.question}\nmodel: {pred!r} (answer {q.answer}); {p_share:.0%} of tokens in the box's "
                         f"patches ({p_area:.0%} of the image)", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.04, label="tokens per patch")
        fig.tight_layout()
        path = out / f"trained_image{i}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        pngs.append(path)
        print(f"       wrote {path}")
    return {"rows": rows, "pngs": pngs, "weights": weights}


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="outputs/demo", help="folder for the heat-map PNGs")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allocator", default="projection", help="untrained-layer mode: the allocator")
    ap.add_argument("--weights", default="auto",
                    help="trained model folder (scripts/export_model.py); 'auto' (default): the first of "
                         f"{', '.join(f'weights/{w.name}' for w in DEFAULT_WEIGHTS)} that exists; 'none' forces the "
                         "untrained-layer mode")
    ap.add_argument("--token-fraction", type=float, default=None,
                    help="trained model: allocate this fraction of the full visual-token count (default: the model's "
                         "own budget)")
    args = ap.parse_args(argv)
    # --images -1 printed the table's header, wrote nothing and exited 0; --seed -1 failed in numpy without the flag.
    if args.images < 1:
        raise ValueError(f"--images must be at least 1, got {args.images}")
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.token_fraction is not None and not 0 < args.token_fraction <= 1:
        raise ValueError(f"--token-fraction must lie in (0, 1], got {args.token_fraction}")
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.weights != "none":
        candidates = DEFAULT_WEIGHTS if args.weights == "auto" else (Path(args.weights),)
        weights = next((w for w in candidates if (w / "config.json").is_file()), None)
        if weights is not None:
            res = trained_demo(weights, out, args.images, args.seed, args.token_fraction)
            print(f"done in {time.perf_counter() - t0:.1f} s")
            return res
        if args.weights != "auto":
            raise ValueError(f"--weights {args.weights!r} is not a trained model folder (no config.json)")
        print(f"No trained weights in {', '.join(str(w) for w in DEFAULT_WEIGHTS)} (scripts/gpu_accuracy_session.sh "
              "on a GPU, then scripts/export_model.py); showing the untrained ArrCoc layer with hand-built features.\n")
    if args.token_fraction is not None:
        raise ValueError(f"--token-fraction {args.token_fraction} needs trained weights (the untrained-layer mode "
                         "shows its preset's budget)")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    layer = ArrCoc(D, D, attn_dim=D, identity_init=True, allocator=args.allocator)  # K=200, 13,200, 64..400
    with torch.no_grad():
        layer.balancing.weights.copy_(torch.tensor([0.5, 0.5, 2.0]))
    layer.eval()
    extractor = HandFeatures(args.seed)
    print(f"ArrCoc preset: K={layer.num_patches} grid={layer.patch_grid} budget={layer.budget} "
          f"tokens/patch {layer.attending.min_tokens}..{layer.attending.max_tokens}, allocator={args.allocator}")
    header = (f"{'image':>5} {'query':>8} {'T':>6} {'min':>4} {'med':>4} {'max':>4} {'gini':>6} {'on target':>10} "
              f"{'target share':>13}")
    print(header)
    print("-" * len(header))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for i in range(args.images):
        img, shapes = make_image(rng)
        pixels = torch.from_numpy(img).permute(2, 0, 1)[None]  # (1, 3, H, W)
        feats = extractor(pixels)
        colours = [s["colour"] for s in shapes[:3]]
        fig, axes = plt.subplots(1, len(colours), figsize=(6 * len(colours), 3.6))
        for ax, (colour, shape) in zip(np.atleast_1d(axes), zip(colours, shapes)):
            with torch.no_grad():
                res = layer(feats, query=extractor.query(colour)[None], pixels=pixels)
            bud = res.budgets[0].numpy()
            tgt = sorted(patches_of(shape))
            share = bud[tgt].sum() / bud.sum()
            area = len(tgt) / bud.size
            print(f"{i:>5} {colour:>8} {int(res.mask[0].sum()):>6} {bud.min():>4} {int(np.median(bud)):>4} "
                  f"{bud.max():>4} {gini(bud):>6.3f} {bud[tgt].mean():>10.1f} {share:>6.1%} ({area:.1%} area)")
            heat = bud.reshape(GRID)
            ax.imshow(img)
            # Patches left at the minimum are drawn transparent so the image shows through.
            up = np.ma.masked_less_equal(np.kron(heat, np.ones((PATCH_PX, PATCH_PX))), layer.attending.min_tokens)
            im = ax.imshow(up, alpha=0.6, cmap="YlOrRd",
                           vmin=layer.attending.min_tokens, vmax=max(heat.max(), layer.attending.min_tokens + 1))
            ax.set_title(f"'where is the {colour} {shape['kind']}?'  (max {bud.max()} tokens)")
            ax.axis("off")
            fig.colorbar(im, ax=ax, fraction=0.025, label="tokens")
        fig.tight_layout()
        path = out / f"budgets_image{i}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        print(f"      wrote {path}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return None


if __name__ == "__main__":
    main()
