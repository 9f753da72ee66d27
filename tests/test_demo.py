"""``scripts/demo.py``'s parts: the untrained-layer mode's hand-built features, shapes and table, the heat-map drawing,
and the trained-model mode's rows on a small random model (the shipped models' runs are in
``tests/models/test_pretrained.py``)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch


def test_gini_of_even_and_one_hot_budgets():
    from scripts.demo import gini

    assert gini(np.full(8, 5)) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)  # (n - 1) / n: everything on one patch
    assert gini(np.array([4, 0, 0, 0])) == pytest.approx(0.75)  # order does not matter


def test_patches_of_lists_the_patches_a_shape_box_overlaps():
    from scripts.demo import GRID, patches_of

    # Box rows 30..50 px (patch rows 0, 1), columns 60..80 px (patch columns 1, 2) on the 10 x 20 grid.
    assert patches_of({"centre": (40, 70), "radius": 10}) == {1, 2, 21, 22}
    # At the bottom-right corner the box is clipped to the grid's last row and column.
    last = GRID[0] * GRID[1] - 1
    assert patches_of({"centre": (315, 635), "radius": 10}) == {last}
    assert patches_of({"centre": (10, 10), "radius": 5}) == {0}


def test_make_image_keeps_every_shape_inside_and_paints_it():
    from scripts.demo import GRID, PALETTE, PATCH_PX, make_image

    h, w = GRID[0] * PATCH_PX, GRID[1] * PATCH_PX
    for seed in range(20):
        img, shapes = make_image(np.random.default_rng(seed))
        assert img.shape == (h, w, 3) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
        assert len(shapes) == 4 and len({s["colour"] for s in shapes}) == 4
        for s in shapes:
            (cy, cx), r = s["centre"], s["radius"]
            assert r <= cy < h - r and r <= cx < w - r, (seed, s)
        last = shapes[-1]  # drawn on top of the others: its centre shows its colour
        assert np.allclose(img[last["centre"]], PALETTE[last["colour"]]), (seed, last)


def test_hand_features_put_a_colour_where_its_query_points():
    from scripts.demo import FINE, GRID, PALETTE, PATCH_PX, HandFeatures

    ext = HandFeatures(0)
    h, w = GRID[0] * PATCH_PX, GRID[1] * PATCH_PX
    img = torch.full((1, 3, h, w), 0.5)
    k = 2 * GRID[1] + 7  # patch row 2, column 7: its top half is red, the rest of the image grey
    r0, c0 = 2 * PATCH_PX, 7 * PATCH_PX
    img[0, :, r0:r0 + PATCH_PX // 2, c0:c0 + PATCH_PX] = torch.tensor(PALETTE["red"])[:, None, None]
    f = ext(img)
    assert f.shape == (1, GRID[0] * GRID[1], FINE, FINE, 32)
    rel = f @ ext.query("red")  # (1, K, FINE, FINE)
    assert int(rel.amax((2, 3))[0].argmax()) == k
    assert rel[0, k, : FINE // 2].min() > 8 and rel[0, k, FINE // 2:].abs().max() < 0.1  # top fine rows only
    # A pure palette colour is 3 on its own palette channel and ~0 on the others (they lie far apart).
    pal = f[0, k, 0, 0, 3:3 + len(PALETTE)]
    assert torch.allclose(pal, 3 * torch.eye(len(PALETTE))[list(PALETTE).index("red")], atol=1e-3)


def test_draw_budgets_outlines_the_box_only_when_given():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scripts.demo import draw_budgets

    fig, (a, b) = plt.subplots(1, 2)
    budgets = np.arange(6.0).reshape(2, 3)
    draw_budgets(a, np.zeros((20, 30, 3)), budgets, (5, 2, 15, 12), numbers=True)
    draw_budgets(b, np.zeros((20, 30, 3)), budgets)
    assert [(p.get_xy(), p.get_width(), p.get_height()) for p in a.patches] == [((5, 2), 10, 10)]
    assert [t.get_text() for t in a.texts] == ["0", "1", "2", "3", "4", "5"] and not b.patches and not b.texts
    plt.close(fig)


def test_untrained_demo_table_favours_the_queried_colour(tmp_path, capsys):
    # One row per question (three colours per image); the queried shape's patches get more than their area's share.
    from scripts.demo import main

    assert main(["--weights", "none", "--out", str(tmp_path), "--images", "2"]) is None
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(\d) +(\w+) .* (\d+\.\d)% \((\d+\.\d)% area\)$", out, re.M)
    assert [int(r[0]) for r in rows] == [0, 0, 0, 1, 1, 1], out
    assert all(len({r[1] for r in rows if int(r[0]) == i}) == 3 for i in (0, 1))  # three different colours
    share, area = (sum(float(r[j]) for r in rows) / len(rows) for j in (2, 3))
    assert share > 1.5 * area, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["budgets_image0.png", "budgets_image1.png"]


@pytest.fixture
def tiny_weights(tmp_path):
    """A random tiny-preset model folder on a 2 x 8 patch grid whose benchmark has scenes of one object too (the
    demo skips those)."""
    from models.builders import build_model, dataclass_to_dict, load_model_cfg
    from models.pretrained import save_pretrained
    from training.benchmark import TINY_GENERATOR

    torch.manual_seed(0)
    cfg = dataclass_to_dict(load_model_cfg("tiny", ["arr_coc.patch_grid=[2, 8]"]))
    model, processor = build_model(cfg)
    bench = {**TINY_GENERATOR, "min_objects": 1, "max_objects": 2}
    save_pretrained(model.eval(), processor, cfg, tmp_path / "w", metadata={"benchmark": bench, "step": 7})
    return tmp_path / "w"


def test_trained_demo_rows_on_a_random_tiny_model(tiny_weights, tmp_path, monkeypatch):
    import eval.run_eval as run_eval
    import models.grounding as grounding
    import training.benchmark as tb
    from scripts.demo import main

    objects, sizes = [], []  # objects per scene drawn; the (width, height) the token shares are measured in
    sample, fraction = tb.sample_scene, run_eval.target_fraction

    def sample_spy(*args):
        scene = sample(*args)
        objects.append(len(scene.objects))
        return scene

    monkeypatch.setattr(tb, "sample_scene", sample_spy)
    monkeypatch.setattr(run_eval, "target_fraction", lambda p, box, size: sizes.append(size) or fraction(p, box, size))
    touched, grids = [], []  # the box's patches, as the demo finds them, and the grid it asks for
    real = grounding.box_patches

    def spy(boxes, image_sizes, grid):
        grids.append(tuple(grid))
        touched.append(real(boxes, image_sizes, grid)[0])
        return real(boxes, image_sizes, grid)

    monkeypatch.setattr(grounding, "box_patches", spy)
    out = main(["--weights", str(tiny_weights), "--out", str(tmp_path / "d"), "--images", "6", "--seed", "1"])
    rows = out["rows"]
    assert 1 in objects and objects.count(2) == 6  # scenes of one shape are drawn, and skipped
    assert sizes == [(64, 64)] * 12
    assert len(touched) == len(rows) == 12 and set(grids) == {(2, 8)}  # rows x columns
    for r, m in zip(rows, touched):  # each row's budgets are the patches' own, in the grid's order
        b = torch.tensor(r["budgets"], dtype=torch.float64)
        assert r["tokens_in_box_patches"] == pytest.approx(float(b[m].sum() / b.sum()))
        assert r["box_patches_area"] == pytest.approx(float(m.double().mean()))
    assert [r["image"] for r in rows] == [i for i in range(6) for _ in range(2)]
    for a, b in zip(rows[::2], rows[1::2]):
        assert a["question"] != b["question"]  # two different shapes, never one shape twice
    for r in rows:
        assert sum(r["budgets"]) == 32 and len(r["budgets"]) == 16
        # A token inside the box lies in a patch the box overlaps, and the box lies inside those patches.
        assert r["tokens_in_box"] <= r["tokens_in_box_patches"] + 1e-9
        assert 0 < r["box_area"] <= r["box_patches_area"] <= 1
        assert r["box_patches_area"] * 16 == pytest.approx(round(r["box_patches_area"] * 16))
    # The full token count is a valid budget (the interval is (0, 1]).
    full = main(["--weights", str(tiny_weights), "--out", str(tmp_path / "f"), "--images", "1",
                 "--token-fraction", "1"])["rows"]
    assert all(sum(r["budgets"]) == 64 for r in full)


def test_trained_demo_draws_scenes_at_the_processors_size_when_the_metadata_has_none(tmp_path, monkeypatch):
    # Generator settings without an image size: the scenes are drawn at the size the processor takes (64 px for the
    # tiny preset), not the generator's default 448 px.
    import training.benchmark as tb
    from models.builders import build_model, dataclass_to_dict, load_model_cfg
    from models.pretrained import save_pretrained
    from scripts.demo import main

    torch.manual_seed(0)
    cfg = dataclass_to_dict(load_model_cfg("tiny"))
    model, processor = build_model(cfg)
    bench = {k: v for k, v in tb.TINY_GENERATOR.items() if k != "image_size"}
    save_pretrained(model.eval(), processor, cfg, tmp_path / "w", metadata={"benchmark": bench})
    sizes = []
    render = tb.render_scene
    monkeypatch.setattr(tb, "render_scene", lambda scene, c: sizes.append(c.image_size) or render(scene, c))
    main(["--weights", str(tmp_path / "w"), "--out", str(tmp_path / "d"), "--images", "1"])
    assert sizes == [64]


def test_demo_refuses_a_folder_without_config(tmp_path):
    from scripts.demo import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a trained model folder"):
        main(["--weights", str(tmp_path / "empty"), "--out", str(tmp_path / "d")])


@pytest.mark.parametrize("flags,match", [
    (["--images", "0"], r"--images must be at least 1, got 0"),
    (["--images", "-1", "--weights", "none"], r"--images must be at least 1, got -1"),
    (["--seed", "-1"], r"--seed must be a non-negative integer, got -1"),
])
def test_demo_refuses_bad_image_counts_and_seeds_by_flag(tmp_path, flags, match):
    """--images 0 or -1 printed the header, wrote no image and exited 0; --seed -1 failed inside numpy ("expected
    non-negative integer") without naming the flag."""
    from scripts.demo import main

    with pytest.raises(ValueError, match=match):
        main(["--out", str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()
