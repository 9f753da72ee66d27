"""Would the answer loss's own gradient point at the queried shape? (nineteenth session diagnostic)

    PYTHONPATH=. python results/label_free/saliency_probe.py <run> [<run> ...]

For each re-asked digit question of the first 32 two-shape test images (as scripts/probe_allocation.py), the model at
its trained budget answers with the right answer as the label; per patch, from the gradient g of that loss at ARR-COC's
output tokens x: |sum_d g*x| averaged over the patch's tokens (gradient x input saliency) and -sum g*x summed over them
(the straight-through gate's descent direction: positive where scaling the patch's tokens up lowers the loss). Prints
how often the top patch of each lies in the queried shape's box patches (they are 25% of the image).
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from models.grounding import box_patches
from scripts.bench_accuracy_budget import _bench_cfg, _load_run, _reasked
from training.collate import VqaCollator

ns = argparse.Namespace(eval_config="configs/eval/small.yaml")
for run in sys.argv[1:]:
    model, processor, ds, dcfg = _load_run(Path(run), ns, None, ["data.path=/tmp/smallb", "data.split=test",
                                                                 "data.generate=false"])
    col = VqaCollator(processor, train=True)
    # ARR-COC's tokens as a leaf that keeps its gradient (the frozen tower gives them none of their own)
    model.arr_coc.register_forward_hook(
        lambda mod, args, out: dataclasses.replace(out, tokens=out.tokens.detach().requires_grad_()))
    hits = {"saliency": 0, "st_direction": 0, "utility": 0}
    n = 0
    for image, asked, _ in _reasked(ds, _bench_cfg(dcfg.path), 32):
        for q in asked:
            b = col([{"image": image, "question": q.question, "answers": [q.answer]}])
            embeds, out = model.embed_inputs(b["pixel_values"], b["input_ids"], query_input_ids=b["query_input_ids"],
                                             query_attention_mask=b["query_attention_mask"])
            loss = model.llava(inputs_embeds=embeds, attention_mask=b["attention_mask"], labels=b["labels"]).loss
            loss.backward()
            gx = (out.tokens.grad[0] * out.tokens[0]).sum(-1).detach()  # (T,)
            keep = out.mask[0]
            idx = out.patch_index[0][keep]
            k = out.budgets.shape[1]
            sal = torch.zeros(k).index_add_(0, idx, gx[keep].abs()) / torch.bincount(idx, minlength=k).clamp_min(1)
            st = torch.zeros(k).index_add_(0, idx, -gx[keep])
            inside = box_patches([q.target_box], [image.size], model.arr_coc.patch_grid)[0]
            hits["saliency"] += int(inside[sal.argmax()])
            hits["st_direction"] += int(inside[st.argmax()])
            hits["utility"] += int(inside[out.utility[0].argmax()])
            n += 1
            model.zero_grad(set_to_none=True)
    print(Path(run).name, json.dumps({f"top_{k}_in_box_patches": round(v / n, 3) for k, v in hits.items()} |
                                     {"questions": n}), flush=True)
