"""Data-loader cost per sample: float32 normalisation in the worker vs. uint8 pixels normalised on the device.

    python -m scripts.bench_data                       # bench preset (448 px), 256 generated rows, one thread
    python -m scripts.bench_data --preset tiny --rows 512

Why: a small model on one H100 trains faster than a handful of CPU workers can decode, resize and normalise 448 px
images, so the loader decides the samples per second. This script times ``VqaCollator`` on one CPU thread (what one
DataLoader worker does) over the same rows for both paths and prints samples/s and the ratio, plus the cost of the
device-side normalisation when it has to run on the CPU too (the CPU-only training path keeps the float collator).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

__all__ = ["main"]


def _time(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _generator(preset: str, image_size: int):
    """The benchmark generator the preset's training recipe uses (``configs/train/<preset>.yaml``), else the default
    generator at the processor's image size (its shapes need images of ~100 px and up: the tiny preset's 64 px needs
    the recipe's smaller shapes)."""
    from pathlib import Path

    from training.benchmark import BenchmarkCfg
    from training.train import load_train_cfg

    recipe = Path("configs/train") / f"{preset}.yaml"
    if recipe.is_file():
        gen = load_train_cfg(str(recipe)).data.generate_cfg
        if gen and gen.get("image_size") == image_size:
            return BenchmarkCfg.from_dict(gen)
    return BenchmarkCfg(image_size=image_size)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="bench", help="model preset whose processor collates (image size)")
    p.add_argument("--data", default=None, help="benchmark directory (default: generate --rows rows in a temp dir)")
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=3, help="repetitions; the fastest is reported")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from models.builders import build_model
    from training.benchmark import make_benchmark
    from training.collate import VqaCollator, move_to
    from training.data import load_benchmark

    _, proc = build_model(a.preset)
    path, tmp = a.data, None
    if path is None:  # generated into a temporary folder, removed at the end
        tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
        path = f"{tmp.name}/bench"
        make_benchmark(path, seed=0, sizes={"train": a.rows}, cfg=_generator(a.preset, proc.image_size[0]), workers=1)
    ds = load_benchmark(path, "train")
    n = min(a.rows, len(ds))
    f32 = VqaCollator(proc, train=True)
    u8 = VqaCollator(proc, train=True, uint8_pixels=True)

    def run(col):
        for s in range(0, n, a.batch):
            col([ds[i] for i in range(s, min(n, s + a.batch))])

    def norm_only():
        for s in range(0, n, a.batch):
            b = u8([ds[i] for i in range(s, min(n, s + a.batch))])
            move_to(b, "cpu", proc)

    run(f32)  # warm-up (file cache, tokenizer)
    t_f, t_u, t_n = _time(lambda: run(f32), a.reps), _time(lambda: run(u8), a.reps), _time(norm_only, a.reps)
    res = {"rows": n, "image_size": list(proc.image_size), "float_worker_ms": 1e3 * t_f / n,
           "uint8_worker_ms": 1e3 * t_u / n, "uint8_plus_cpu_normalise_ms": 1e3 * t_n / n}
    print(f"{n} rows at {proc.image_size[0]}x{proc.image_size[1]}, batch {a.batch}, one CPU thread (best of {a.reps})")
    print("| collator path | ms / sample | samples/s per worker | vs float |")
    print("|---|---:|---:|---:|")
    for name, t in (("float32 normalised in the worker", t_f), ("uint8 (normalised on the device)", t_u),
                    ("uint8 + normalise on this CPU", t_n)):
        print(f"| {name} | {1e3 * t / n:.2f} | {n / t:.0f} | {t_f / t:.2f}x |")
    if tmp is not None:
        tmp.cleanup()
    return res


if __name__ == "__main__":
    main()
