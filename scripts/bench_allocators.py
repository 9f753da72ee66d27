"""Time per call of every registered allocator, as ratios to ``uniform`` measured in the same run.

    python -m scripts.bench_allocators                 # CPU, and CUDA too when a GPU is present
    python -m scripts.bench_allocators --batches 1 64 --repeats 5 --threads 1

Default preset (K=200, budget 13,200, 64..400), utilities ~ N(0, 2²). Each figure is the median of ``--repeats``
timed calls after one warm-up call. The bandit gets a random (B, 200, 67) context and no updates (selection cost
only). ``mckp`` and ``bandit`` use the exact DP on CPU and the Lagrangian form on CUDA (the DP's
loop over patches is latency-bound there).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from arr_coc import create_allocator, list_allocators


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (first-call dispatch, caches)
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--allocators", nargs="+", default=None, help="default: every registered allocator")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (on a shared machine, 1 avoids OpenMP contention with other jobs)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if any(b < 1 for b in args.batches):
        raise ValueError(f"--batches must be >= 1, got {[b for b in args.batches if b < 1]}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    names = args.allocators or list_allocators()
    names = ["uniform", *[n for n in names if n != "uniform"]]  # the baseline is timed first
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, K=200, budget=13200, 64..400")
    for dev in devices:
        print(f"\n## {dev.type}" + (f" ({torch.cuda.get_device_name()})" if dev.type == "cuda" else ""))
        head = f"{'allocator':>13} " + " ".join(f"{f'B={b} ms':>12} {'x uniform':>9}" for b in args.batches)
        print(head)
        print("-" * len(head))
        base: dict[int, float] = {}
        for name in names:
            lagr = name in ("mckp", "bandit") and dev.type == "cuda"
            alloc = create_allocator(name, **({"method": "lagrangian", "mode": "at_most"} if lagr else {}))
            cells = []
            for b in args.batches:
                g = torch.Generator().manual_seed(0)
                u = torch.randn(b, 200, generator=g).mul(2).to(dev)
                # The bandit chooses from a per-patch context (the pipeline passes [query; patch mean; scores]).
                call_kw = {"context": torch.randn(b, 200, 67, generator=g).to(dev)} if name == "bandit" else {}
                t = _time(lambda: alloc(u, **call_kw), args.repeats, dev)
                if name == "uniform":
                    base[b] = t
                cells.append(f"{t * 1e3:>12.3f} {t / base[b]:>9.1f}")
            print(f"{name:>13} " + " ".join(cells))


if __name__ == "__main__":
    main()
