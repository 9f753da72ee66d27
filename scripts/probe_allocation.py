r"""Which relevance score steers a trained ARR-COC model's allocation to the queried shape?

    python -m scripts.probe_allocation --run /tmp/smallrun/seed0/arr_coc_grounded --eval-config configs/eval/small.yaml \
        --data /tmp/smallb --fraction 0.25

Asks "what digit is in the <shape>?" about up to three shapes of each of the first ``--images`` test images with at
least two shapes (the accuracy benchmark's re-asked questions), and reports, over all questions, how often the top
patch of each standardised score (propositional, perspectival, participatory) and of the utility lies in the patches
the queried shape's box overlaps, the share of the tokens those patches get, and the learned balancing weights.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

__all__ = ["main", "probe"]


def probe(model, processor, ds, bcfg, n_images: int = 32, fraction: float | None = None) -> dict[str, float]:
    """The statistics above for ``model`` (an ``ArrCocLlava`` in eval mode) on the rows of ``ds``, at ``fraction``
    of the full token count (``None``: the trained budget), as the evaluation runs it."""
    from eval.baselines import create_method
    from models.grounding import box_patches
    from scripts.bench_accuracy_budget import _reasked

    layer = model.arr_coc
    method = create_method("arr_coc", model, fraction)
    processor.budget = method.placeholders  # the prompt's <image> run is the budget's length
    names = ("propositional", "perspectival", "participatory", "utility")
    hits = {n: 0 for n in names}
    share, count = 0.0, 0
    for image, asked, _ in _reasked(ds, bcfg, n_images):
        for q in asked:
            batch = processor([image], [q.question])
            with torch.no_grad(), layer.budget_override(method.num_tokens):
                _, out = model.embed_inputs(batch["pixel_values"], batch["input_ids"],
                                            query_input_ids=batch["query_input_ids"],
                                            query_attention_mask=batch["query_attention_mask"])
            inside = box_patches([q.target_box], [image.size], layer.patch_grid)[0]
            for j, name in enumerate(names):
                v = out.scores[0, :, j] if j < 3 else out.utility[0]
                hits[name] += int(inside[v.argmax()])
            b = out.budgets[0].double()
            share += float(b[inside].sum() / b.sum())
            count += 1
    if count == 0:
        raise ValueError("no test image with at least two shapes to ask about")
    res = {f"top_{n}_in_box_patches": hits[n] / count for n in names}
    res.update({"tokens_in_box_patches": share / count, "questions": count, "tokens": method.num_tokens,
                "balancing_weights": [round(float(w), 4) for w in layer.balancing.weights.detach()],
                "focus": float(layer.balancing.log_focus.detach().exp())})
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m scripts.probe_allocation", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="training output folder (its latest checkpoint) or checkpoint folder")
    p.add_argument("--eval-config", default="configs/eval/tiny.yaml", help="the preset's eval config")
    p.add_argument("--data", required=True, help="benchmark directory (its test split is used)")
    p.add_argument("--fraction", type=float, default=None, help="token fraction (default: the trained budget)")
    p.add_argument("--images", type=int, default=32)
    a = p.parse_args(argv)
    if not Path(a.run).exists():
        raise ValueError(f"--run {a.run!r} does not exist")
    from scripts.bench_accuracy_budget import _bench_cfg, _load_run

    ns = argparse.Namespace(eval_config=a.eval_config)
    model, processor, ds, data_cfg = _load_run(Path(a.run), ns, a.fraction,
                                               [f"data.path={a.data}", "data.split=test", "data.generate=false"])
    res = probe(model, processor, ds, _bench_cfg(data_cfg.path), a.images, a.fraction)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
