"""Export a trained run's model as a self-contained folder (``models/pretrained.py``) for inference and the demo.

    python -m scripts.export_model --run runs/acc_budget/seed0/arr_coc_projection --out weights/arr_coc_bench
    python -m scripts.export_model --run runs/bench/checkpoints/step_00004000 --out /tmp/m --dtype float32

``--run`` is a training output folder (its latest checkpoint) or one checkpoint folder. The folder written holds
``config.json``, ``model.safetensors`` (cast to ``--dtype``, bf16 by default: half the bytes) and ``processor/``.
Prints one JSON line: where, size in MiB, parameter count, the checkpoint's step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

__all__ = ["main"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m scripts.export_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="training output folder or checkpoint folder")
    p.add_argument("--out", required=True, help="destination folder (replaced if it exists)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--max-mb", type=float, default=None, help="fail if the weights file is larger (MiB)")
    a = p.parse_args(argv)
    if a.max_mb is not None and not (math.isfinite(a.max_mb) and a.max_mb > 0):  # nan compared False: no check at all
        raise ValueError(f"--max-mb must be a positive number of MiB, got {a.max_mb!r}")

    from eval.run_eval import load_trained_model
    from models.pretrained import save_pretrained

    model, processor, model_cfg, state, ckpt = load_trained_model(a.run)
    train_cfg = state.get("config", {})
    # The generator settings of the benchmark it was trained on, so the demo draws the same scenes (an exported folder
    # passes its own on).
    bench = state.get("metadata", {}).get("benchmark")
    data_path = train_cfg.get("data", {}).get("path")
    if train_cfg.get("data", {}).get("source") == "benchmark" and data_path:
        from training.data import read_manifest

        try:
            bench = read_manifest(data_path).get("generator")
        except (OSError, ValueError):
            bench = None
    metadata = {"checkpoint": str(ckpt.resolve()), "step": state.get("step"),
                "train_seed": train_cfg.get("train", {}).get("seed"), "benchmark": bench,
                # a fine-tune: what it started from, and the budgets it was trained for
                "init_from": train_cfg.get("train", {}).get("init_from"),
                "budget_fractions": train_cfg.get("train", {}).get("budget_fractions")}
    if state.get("exported"):  # re-exporting an exported folder (e.g. to another dtype): keep where it came from
        metadata.update({k: v for k, v in state.get("metadata", {}).items() if v is not None})
    # Written beside --out first: an export over --max-mb is removed there, and whatever --out held stays.
    out = Path(a.out)
    # --out is replaced, but never by deleting the training run being exported (--run runs/x --out runs/x, or --out a
    # folder above it, deleted its checkpoints and logs); an exported folder may still be re-exported in place.
    source, dest = ckpt.resolve(), out.resolve()
    if out.exists() and (dest in source.parents or (dest == source and not state.get("exported"))):
        raise ValueError(f"--out {a.out!r} holds the checkpoint being exported ({str(ckpt)!r}), which replacing it "
                         "would delete; choose another --out")
    stage = out.with_name(f".{out.name}.export")
    shutil.rmtree(stage, ignore_errors=True)
    save_pretrained(model, processor, model_cfg, stage, dtype=a.dtype, metadata=metadata)
    mib = (stage / "model.safetensors").stat().st_size / 2**20
    res = {"out": str(out), "weights_mib": round(mib, 2), "params": sum(t.numel() for t in model.state_dict().values()),
           "step": state.get("step"), "dtype": a.dtype}
    print(json.dumps(res))
    if a.max_mb is not None and mib > a.max_mb:
        shutil.rmtree(stage)
        kept = f"; {out} is unchanged" if out.exists() else ""
        print(f"weights are {mib:.1f} MiB, over --max-mb {a.max_mb}; not written{kept}", file=sys.stderr)
        raise SystemExit(1)
    if out.exists():
        shutil.rmtree(out)
    os.replace(stage, out)
    return res


if __name__ == "__main__":
    main()
