"""Generate the ARR-COC VQA benchmark (coloured shapes holding handwritten digits) and save it to disk.

Usage (from the repo root):

    python -m scripts.make_benchmark --out data/arr_coc_bench                        # 50k / 2k / 5k, seed 0
    python -m scripts.make_benchmark --out /tmp/mini --train-size 512 --val-size 64 --test-size 64 --workers 1
    python -m scripts.make_benchmark --out /tmp/small --image-size 128 --set shape_size=[24,30] glyph_size=[9,11]

The result is a ``datasets.DatasetDict`` (``train``, ``val``, ``test``) written with ``save_to_disk``, plus
``manifest.json`` at the root and in each split directory. Load it with ``training.data.load_benchmark(out)``.
The generator itself, and the reasons for its design, live in ``training/benchmark.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from arr_coc.config import parse_override
from training.benchmark import DEFAULT_SIZES, BenchmarkCfg, make_benchmark

__all__ = ["main", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    defaults = BenchmarkCfg()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed (default 0)")
    # Split sizes: 0 leaves a split out.
    for split, size in DEFAULT_SIZES.items():
        parser.add_argument(f"--{split}-size", type=int, default=size, help=f"{split} rows (default {size}; 0 skips)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="rendering processes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    # Generator parameters most worth changing; everything else has BenchmarkCfg defaults.
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="canvas side in pixels")
    parser.add_argument("--min-objects", type=int, default=defaults.min_objects, help="fewest shapes per image")
    parser.add_argument("--max-objects", type=int, default=defaults.max_objects, help="most shapes per image")
    parser.add_argument(
        "--question-types", default=",".join(defaults.question_types), help="comma-separated subset of the types"
    )
    parser.add_argument(
        "--questions-per-image", type=int, default=defaults.questions_per_image, help="rows sharing one image"
    )
    parser.add_argument("--image-format", choices=("jpeg", "png"), default=defaults.image_format)
    parser.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality)
    parser.add_argument("--noise", type=int, default=defaults.noise_amplitude, help="+- per-pixel noise amplitude")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="any other BenchmarkCfg field, e.g. shape_size=[26,32] glyph_size=[9,11] "
                             "distractor_glyphs=2 (see training/benchmark.py); unknown fields are refused")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the benchmark; returns the process exit code."""
    args = parse_args(argv)
    params = dict(
        image_size=args.image_size,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        question_types=tuple(t.strip() for t in args.question_types.split(",") if t.strip()),
        questions_per_image=args.questions_per_image,
        image_format=args.image_format,
        jpeg_quality=args.jpeg_quality,
        noise_amplitude=args.noise,
    )
    for item in args.set:
        key, value = parse_override(item)
        if key in params:
            raise ValueError(f"--set {item!r}: {key} has its own option (--{key.replace('_', '-')})")
        params[key] = value
    cfg = BenchmarkCfg.from_dict(params)
    sizes = {split: getattr(args, f"{split}_size") for split in DEFAULT_SIZES}
    negative = {split: n for split, n in sizes.items() if n < 0}
    if negative:
        raise ValueError(f"split sizes must be >= 0 (0 skips a split), got {negative}")
    sizes = {split: n for split, n in sizes.items() if n > 0}
    # Recorded in the manifest so it says how the data were made.
    command = " ".join(["python -m scripts.make_benchmark", *(sys.argv[1:] if argv is None else argv)])
    start = time.perf_counter()
    dataset = make_benchmark(
        args.out,
        seed=args.seed,
        sizes=sizes,
        cfg=cfg,
        workers=args.workers,
        overwrite=args.overwrite,
        extra_manifest={"command": command},
    )
    seconds = time.perf_counter() - start
    summary = {split: len(ds) for split, ds in dataset.items()}
    print(json.dumps({"out": args.out, "rows": summary, "seconds": round(seconds, 1), "workers": args.workers}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
