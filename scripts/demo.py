"""The main job: run the ARR-COC layer (default ARR-COC-0-1 preset) on generated images with several queries.

    make demo                       # or: python -m scripts.demo --out outputs/demo

For each image it asks colour questions ("where is the red shape?" ...), prints a per-patch budget summary table and
writes a heat-map PNG of the budgets over the image, one panel per query. No weights are downloaded: the features
come from a fixed, hand-built extractor (mean colour, similarity to a colour palette, edge energy, and fixed random
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="outputs/demo", help="folder for the heat-map PNGs")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allocator", default="projection")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

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


if __name__ == "__main__":
    main()
