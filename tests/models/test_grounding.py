"""Grounding supervision (models/grounding.py): boxes → per-patch targets, the loss, the collator, the recipe."""

from __future__ import annotations

import json

import csv
import math

import pytest
import torch

from models.grounding import batch_boxes, box_patch_mass, grounding_loss, normalised_boxes


def test_normalised_boxes_and_their_errors():
    boxes, valid = normalised_boxes([[8, 16, 24, 32], [], None], [(64, 64), (64, 64), (32, 16)])
    torch.testing.assert_close(boxes[0], torch.tensor([0.125, 0.25, 0.375, 0.5]))
    assert valid.tolist() == [True, False, False] and boxes[1:].abs().sum() == 0
    # Width and height are not confused: x divides by W, y by H.
    b, _ = normalised_boxes([[0, 0, 32, 8]], [(32, 16)])
    torch.testing.assert_close(b[0], torch.tensor([0.0, 0.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match=r"row 0: a box is \[x0, y0, x1, y1\], got \[1, 2, 3\]"):
        normalised_boxes([[1, 2, 3]], [(8, 8)])
    with pytest.raises(ValueError, match="row 1: box .* is not finite"):
        normalised_boxes([[0, 0, 1, 1], [0, 0, math.nan, 1]], [(8, 8), (8, 8)])
    with pytest.raises(ValueError, match=r"row 0: box \[0, 0, 9, 4\] is empty or outside the 8x8 image"):
        normalised_boxes([[0, 0, 9, 4]], [(8, 8)])
    with pytest.raises(ValueError, match="is empty"):
        normalised_boxes([[3, 0, 3, 4]], [(8, 8)])
    with pytest.raises(ValueError, match="2 boxes for 1 images"):
        normalised_boxes([[], []], [(8, 8)])


def test_box_patch_mass_is_the_share_of_the_box_area_per_cell():
    # 2x4 grid (rows of height 1/2, columns of width 1/4), row-major: cell k = row * 4 + col.
    boxes = torch.tensor([
        [0.25, 0.0, 0.5, 0.5],    # exactly cell (0, 1)
        [0.125, 0.5, 0.375, 1.0],  # half in (1, 0), half in (1, 1)
        [0.0, 0.0, 1.0, 1.0],     # the whole image: every cell 1/8
        [0.0, 0.0, 0.0, 0.0],     # no box
    ])
    m = box_patch_mass(boxes, (2, 4))
    assert m.shape == (4, 8)
    torch.testing.assert_close(m[0], torch.eye(8)[1])
    torch.testing.assert_close(m[1], torch.tensor([0, 0, 0, 0, 0.5, 0.5, 0, 0]))
    torch.testing.assert_close(m[2], torch.full((8,), 1 / 8))
    assert m[3].sum() == 0
    with pytest.raises(ValueError, match=r"boxes must have shape \(B, 4\), got \(2, 3\)"):
        box_patch_mass(torch.zeros(2, 3), (2, 2))


def test_box_patch_mass_agrees_with_where_arr_coc_puts_each_patchs_tokens():
    # The target assumes the realizing stage's layout: patch k's tokens lie in cell k of the row-major grid.
    import arr_coc

    layer = arr_coc.ArrCoc(dim=8, query_dim=8, num_patches=6, patch_grid=(2, 3), budget=12, min_tokens=1,
                           max_tokens=4)
    out = layer(torch.randn(1, 6, 2, 2, 8), query=torch.randn(1, 8))
    pos, idx = out.positions[0][out.mask[0]], out.patch_index[0][out.mask[0]]
    for k in range(6):
        r, c = divmod(k, 3)
        box = torch.tensor([[c / 3, r / 2, (c + 1) / 3, (r + 1) / 2]])
        assert box_patch_mass(box, (2, 3))[0].argmax() == k
        p = pos[idx == k]  # (row, col) centres
        assert bool(((p[:, 0] >= r / 2) & (p[:, 0] < (r + 1) / 2) & (p[:, 1] >= c / 3) & (p[:, 1] < (c + 1) / 3)).all())


def test_grounding_loss_is_the_cross_entropy_over_rows_with_a_box():
    u = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [1.0, 1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    valid = torch.tensor([True, True, False])
    total, rows = grounding_loss(u, target, valid)
    logp = torch.log_softmax(u.detach(), -1)
    expect = -(logp[0, 2]) - 0.5 * (logp[1, 0] + logp[1, 1])
    torch.testing.assert_close(total, expect)
    assert rows.item() == 2
    total.backward()
    assert u.grad[2].abs().sum() == 0  # a row without a box contributes nothing
    assert u.grad[0, 2] < 0 and u.grad[1, 1] < 0  # descent raises the utility of the boxed patches
    with pytest.raises(ValueError, match="disagree in shape"):
        grounding_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, dtype=torch.bool))


def test_collator_carries_boxes_only_for_rows_that_have_them():
    from PIL import Image

    from models.builders import build_model
    from training.collate import VqaCollator

    _, processor = build_model("tiny")
    img = Image.new("RGB", (128, 64), "red")
    rows = [{"image": img, "question": "what digit is in the red circle?", "answers": ["3"], "target_box": [32, 16, 64, 48]},
            {"image": img, "question": "how many squares?", "answers": ["2"], "target_box": []}]
    batch = VqaCollator(processor, train=True)(rows)
    torch.testing.assert_close(batch["target_box"][0], torch.tensor([0.25, 0.25, 0.5, 0.75]))
    assert batch["target_box_valid"].tolist() == [True, False]
    plain = VqaCollator(processor, train=True)([{k: v for k, v in r.items() if k != "target_box"} for r in rows])
    assert "target_box" not in plain and batch_boxes([{"image": img}]) == {}


def test_recipe_trains_with_grounding_and_the_allocation_moves_to_the_box(tmp_path):
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark
    from training.train import load_train_cfg, main

    data = tmp_path / "bench"
    make_benchmark(data, seed=0, sizes={"train": 16}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    base = ["--config", "configs/train/tiny.yaml", f"data.path={data}", "data.generate=false", "dist.fsdp=off",
            "train.batch_size=16", "train.save_every=null", "optim.warmup_steps=1", "optim.schedule=constant"]
    plain = main(base + [f"output_dir={tmp_path / 'plain'}", "train.max_steps=2"])
    grounded = main(base + [f"output_dir={tmp_path / 'grd'}", "train.max_steps=25", "train.grounding_weight=10",
                            "optim.arr_coc_lr=0.03"])
    with open(tmp_path / "grd" / "log.csv", newline="") as f:
        logged = [float(r["grounding_loss"]) for r in csv.DictReader(f)]
    assert all(r["grounding_loss"] == 0.0 for r in plain)
    assert grounded[0]["loss"] == pytest.approx(plain[0]["loss"], rel=1e-6)  # same start: the LM loss is unchanged
    assert grounded[1]["loss"] != pytest.approx(plain[1]["loss"], rel=1e-9)  # the extra gradient changed step 1
    # Same 16 rows every step: the loss must fall well below where it started (a cross-entropy over 16 patches).
    assert logged[0] > 1.5 and min(logged[-5:]) < logged[0] - 0.5, logged
    with pytest.raises(ValueError, match="grounding_weight must be a finite number >= 0, got -1"):
        load_train_cfg("configs/train/tiny.yaml", ["train.grounding_weight=-1"])


def test_recipe_refuses_grounding_on_data_without_boxes(tmp_path):
    # A VQA source maps onto the common schema, which has no target_box: the run stops at setup, naming the columns.
    import datasets
    import numpy as np
    from PIL import Image

    from training.train import main

    rows = {"question": ["how many dogs?"] * 8, "answers": [["2"]] * 8, "question_id": list(range(8)),
            "answer_type": ["number"] * 8, "image": [Image.fromarray(np.zeros((64, 64, 3), np.uint8))] * 8}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "vqa"))
    base = ["--config", "configs/train/tiny.yaml", "data.source=vqav2", f"data.path={tmp_path / 'vqa'}",
            "data.split=train", "data.generate=false", "dist.fsdp=off", "train.max_steps=1", "train.batch_size=4",
            f"output_dir={tmp_path / 'run'}"]
    with pytest.raises(ValueError, match=r"train.grounding_weight=1.0 needs a target_box column .*data.source="
                                         r"'vqav2'.*has only \['image', 'question', 'answers'"):
        main(base + ["train.grounding_weight=1.0"])


def test_recipe_grounds_on_a_vqa_source_that_keeps_a_target_box_column(tmp_path):
    # Any VQA source can carry region labels: a `target_box` column kept through the schema mapping.
    import datasets
    import numpy as np
    from PIL import Image

    from training.train import main

    rows = {"question": ["what digit is in the red circle?"] * 8, "answers": [["3"]] * 8, "question_id": list(range(8)),
            "answer_type": ["number"] * 8, "target_box": [[0, 0, 32, 32], []] * 4,
            "image": [Image.fromarray(np.zeros((64, 64, 3), np.uint8))] * 8}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "vqa"))
    logged = main(["--config", "configs/train/tiny.yaml", "data.source=vqav2", f"data.path={tmp_path / 'vqa'}",
                   "data.split=train", "data.generate=false", 'data.keep_columns=["target_box"]', "dist.fsdp=off",
                   "train.max_steps=1", "train.batch_size=4", "train.grounding_weight=1.0",
                   f"output_dir={tmp_path / 'run'}"])
    # The box covers the top-left 2x2 of the 4x4 patch grid: the loss is a cross-entropy against a 4-patch target.
    assert 0 < logged[0]["grounding_loss"] < 10
    with pytest.raises(ValueError, match=r"data.keep_columns=\['target_box'\] applies to the VQA sources"):
        main(["--config", "configs/train/tiny.yaml", 'data.keep_columns=["target_box"]', f"output_dir={tmp_path / 'b'}"])


def test_probe_allocation_script_reports_where_each_score_points(tmp_path):
    from scripts.probe_allocation import main as probe
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark
    from training.train import main

    data = tmp_path / "bench"
    make_benchmark(data, seed=0, sizes={"train": 8, "test": 16}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    main(["--config", "configs/train/tiny.yaml", f"data.path={data}", "data.generate=false", "dist.fsdp=off",
          "train.max_steps=1", "train.batch_size=4", f"output_dir={tmp_path / 'run'}"])
    res = probe(["--run", str(tmp_path / "run"), "--data", str(data), "--images", "4"])
    assert 1 <= res["questions"] <= 12 and len(res["balancing_weights"]) == 3
    for key in ("top_propositional_in_box_patches", "top_participatory_in_box_patches", "top_utility_in_box_patches",
                "tokens_in_box_patches"):
        assert 0 <= res[key] <= 1
    # --fraction sets the budget the layer allocates (it was ignored): at K·min_tokens tokens every patch gets
    # min_tokens, so the share of the tokens in the box's patches is the share of the patches the box overlaps.
    import datasets

    from models.grounding import box_patches
    from scripts.bench_accuracy_budget import _bench_cfg, _reasked

    arr = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["arr_coc"]
    floor = arr["num_patches"] * arr["min_tokens"]
    assert floor == 16 and res["tokens"] == arr["budget"] == 32  # the tiny preset: N = 64 fine tokens
    full = probe(["--run", str(tmp_path / "run"), "--data", str(data), "--images", "4", "--fraction", "0.25"])
    assert full["tokens"] == floor
    grid = tuple(arr["patch_grid"])
    ds = datasets.load_from_disk(str(data))["test"]
    shares = [box_patches([q.target_box], [image.size], grid)[0].double().mean().item()
              for image, asked, _ in _reasked(ds, _bench_cfg(str(data)), 4) for q in asked]
    assert full["questions"] == len(shares)
    assert full["tokens_in_box_patches"] == pytest.approx(sum(shares) / len(shares))
    with pytest.raises(ValueError, match="does not exist"):
        probe(["--run", str(tmp_path / "nowhere"), "--data", str(data)])


def test_probe_counts_each_scores_top_patch_and_the_budget_share(tmp_path):
    # The layer's scores, utility and budgets replaced by ones built from each question's box: the propositional and
    # participatory scores peak inside the box's patches (and are lowest outside), the perspectival score and the
    # utility the other way round; inside patches get 3 tokens, the others 1.
    import dataclasses

    import datasets

    from models.builders import build_model
    from models.grounding import box_patches
    from scripts.bench_accuracy_budget import _bench_cfg, _reasked
    from scripts.probe_allocation import probe
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark

    data = tmp_path / "bench"
    make_benchmark(data, seed=0, sizes={"test": 8}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    ds, bcfg = datasets.load_from_disk(str(data))["test"], _bench_cfg(str(data))
    torch.manual_seed(0)
    model, processor = build_model("tiny")
    model.eval()
    grid = model.arr_coc.patch_grid
    boxes = [box_patches([q.target_box], [image.size], grid)[0] for image, asked, _ in _reasked(ds, bcfg, 3)
             for q in asked]
    assert 3 < len(boxes) < 12 and all(0 < b.sum() < b.numel() for b in boxes)
    queue = list(boxes)
    embed = model.embed_inputs

    def peaked(inside, towards):
        v = torch.where(inside == towards, 1.0, -1.0)
        v[int(torch.nonzero(inside == towards)[0, 0])] = 2.0
        return v

    def fake(*args, **kwargs):
        emb, out = embed(*args, **kwargs)
        m = queue.pop(0)
        scores = torch.stack([peaked(m, True), peaked(m, False), peaked(m, True)], -1)[None]
        return emb, dataclasses.replace(out, scores=scores, utility=peaked(m, False)[None],
                                        budgets=torch.where(m, 3, 1)[None])

    model.embed_inputs = fake
    with torch.no_grad():
        model.arr_coc.balancing.weights.copy_(torch.tensor([0.1, 0.2, 0.3]))
        model.arr_coc.balancing.log_focus.fill_(0.5)
    res = probe(model, processor, ds, bcfg, 3)
    assert not queue and res["questions"] == len(boxes)
    assert [res[f"top_{n}_in_box_patches"] for n in ("propositional", "perspectival", "participatory", "utility")] == [
        1.0, 0.0, 1.0, 0.0]
    want = sum(3 * float(b.sum()) / (3 * float(b.sum()) + float((~b).sum())) for b in boxes) / len(boxes)
    assert res["tokens_in_box_patches"] == pytest.approx(want)
    assert res["balancing_weights"] == [0.1, 0.2, 0.3] and res["focus"] == pytest.approx(math.exp(0.5))
    assert res["tokens"] == model.arr_coc.budget
    with pytest.raises(ValueError, match="no test image with at least two shapes"):
        probe(model, processor, ds, bcfg, 0)


def test_box_patches_marks_the_cells_a_pixel_box_overlaps():
    from models.grounding import box_patches

    # A 64x32 (W x H) image on a 2x4 grid: cells are 16 px wide and 16 px tall.
    touched = box_patches([[8, 0, 24, 8], []], [(64, 32), (64, 32)], (2, 4))
    assert touched.dtype == torch.bool
    assert touched[0].nonzero().flatten().tolist() == [0, 1] and not touched[1].any()


def test_box_patches_of_a_box_on_cell_edges_marks_no_neighbour():
    from models.grounding import box_patches

    # A 300x300 image on a 3x3 grid: cells are 100 px, so [100, 0, 200, 300) is exactly column 1 (patches 1, 4, 7)
    # and [0, 100, 300, 200) exactly row 1 (patches 3, 4, 5). In float32, 200/300 rounds above the grid line 2/3 and
    # 100/300 below linspace's 1/3, so the normalised box overlapped columns 2 or 0 by ~6e-8 and marked them.
    touched = box_patches([[100, 0, 200, 300], [0, 100, 300, 200]], [(300, 300)] * 2, (3, 3))
    assert touched[0].nonzero().flatten().tolist() == [1, 4, 7]
    assert touched[1].nonzero().flatten().tolist() == [3, 4, 5]
    # Every column-aligned box of a 14x14 grid (10 px cells on a 140 px image) marks just its own column.
    for c in range(14):
        cols = box_patches([[10 * c, 0, 10 * (c + 1), 140]], [(140, 140)], (14, 14))[0].view(14, 14)
        assert cols.all(0).nonzero().flatten().tolist() == [c] and cols.any(0).sum() == 1


def test_normalised_boxes_checks_every_coordinate_against_its_own_side():
    # A 8x4 (W x H) image: y is bounded by H, x by W; the far edges themselves are inside ([x0, x1) pixel boxes).
    b, valid = normalised_boxes([[0, 0, 8, 4]], [(8, 4)])
    torch.testing.assert_close(b[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert valid.tolist() == [True]
    for bad in ([0, 0, 4, 6], [0, 3, 4, 3], [0, -1, 4, 2], [-1, 0, 4, 2], [0, 0, 4, 5]):
        with pytest.raises(ValueError, match=r"row 0: box .* is empty or outside the 8x4 image"):
            normalised_boxes([bad], [(8, 4)])
    with pytest.raises(ValueError, match=r"row 0: box .* is not finite"):
        normalised_boxes([[0, 0, 4, math.nan]], [(8, 4)])
    with pytest.raises(ValueError, match=r"row 0: a box is \[x0, y0, x1, y1\], got \[0, 0, 4, 2, 1\]"):
        normalised_boxes([[0, 0, 4, 2, 1]], [(8, 4)])


def test_box_patch_mass_of_a_box_inside_one_cell_and_a_batched_input():
    # Strictly inside cell (0, 0) of a 2x2 grid: the other cells get nothing (negative overlaps do not multiply up).
    m = box_patch_mass(torch.tensor([[0.05, 0.05, 0.1, 0.1], [0.6, 0.1, 0.9, 0.2]]), (2, 2))
    torch.testing.assert_close(m, torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"boxes must have shape \(B, 4\), got \(2, 4, 4\)"):
        box_patch_mass(torch.zeros(2, 4, 4), (2, 2))


def test_grounding_loss_refuses_a_broadcastable_target_and_ignores_rows_without_a_box():
    with pytest.raises(ValueError, match="disagree in shape"):  # (1, 3) would broadcast over the batch silently
        grounding_loss(torch.zeros(2, 3), torch.ones(1, 3) / 3, torch.ones(2, dtype=torch.bool))
    # A row without a box never enters the sum, even where its cross-entropy is not finite.
    u = torch.tensor([[0.0, 0.0], [-math.inf, 0.0]])
    total, rows = grounding_loss(u, torch.tensor([[0.5, 0.5], [0.0, 0.0]]), torch.tensor([True, False]))
    torch.testing.assert_close(total, torch.log(torch.tensor(2.0)))
    assert rows.item() == 1


def test_batch_boxes_sizes_arrays_and_keeps_rows_missing_the_column():
    import numpy as np

    from models.grounding import image_size

    img = np.zeros((32, 64, 3), np.uint8)  # H x W x C
    assert image_size(img) == (64, 32)
    out = batch_boxes([{"image": img, "target_box": [16, 8, 32, 16]}, {"image": img}])
    torch.testing.assert_close(out["target_box"], torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]))
    assert out["target_box_valid"].tolist() == [True, False]
