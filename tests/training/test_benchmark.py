"""The generated VQA benchmark: schema, determinism, correct answers and glyphs inside the target box."""

import dataclasses
import io
import json
import re

import datasets
import numpy as np
import pytest
from PIL import Image

from scripts.make_benchmark import main as make_benchmark_main
from training.benchmark import (
    BENCHMARK_VERSION,
    DEFAULT_COLOURS,
    DEFAULT_SHAPES,
    _MARGIN,
    BenchmarkCfg,
    Scene,
    SceneObject,
    _digits,
    _glyph_pools,
    _ink_for,
    generate_rows,
    make_benchmark,
    make_question,
    render_scene,
    sample_scene,
)
from training.data import BENCHMARK_EXTRA_COLUMNS, SCHEMA_COLUMNS, load_benchmark, read_manifest

CFG = BenchmarkCfg()
PLURAL_TO_SHAPE = {"circles": "circle", "squares": "square", "triangles": "triangle", "diamonds": "diamond",
                   "crosses": "cross"}  # fmt: skip


@pytest.fixture(scope="module")
def rows():
    """64 rows of the train split, seed 11."""
    return generate_rows(CFG, seed=11, split="train", start=0, stop=64)


def _expected(scene: dict, question: str) -> tuple[str, list[int]]:
    """Re-derive (answer, target_box) from the scene description, independently of the generator's code."""
    objects = scene["objects"]
    if m := re.fullmatch(r"what digit is in the (\w+) (\w+)\?", question):
        (obj,) = [o for o in objects if (o["colour"], o["shape"]) == m.groups()]
        return str(obj["digit"]), obj["box"]
    if m := re.fullmatch(r"what colour is the shape holding an? (\d)\?", question):
        (obj,) = [o for o in objects if o["digit"] == int(m.group(1))]
        return obj["colour"], obj["box"]
    if m := re.fullmatch(r"how many (\w+)\?", question):
        return str(sum(o["shape"] == PLURAL_TO_SHAPE[m.group(1)] for o in objects)), []
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        found = [o for o in objects if (o["colour"], o["shape"]) == m.groups()]
        return ("yes", found[0]["box"]) if found else ("no", [])
    raise AssertionError(f"unexpected question {question!r}")


def test_answers_match_the_scene(rows):
    seen_types = set()
    for row in rows:
        scene = json.loads(row["scene"])
        answer, box = _expected(scene, row["question"])
        assert row["answers"] == [answer] * 10, row["question"]
        assert row["target_box"] == box
        seen_types.add(row["question_type"])
    assert seen_types == {"digit", "colour", "count", "yesno"}


def test_glyph_is_drawn_inside_the_target_box(rows):
    checked = 0
    for row in rows:
        if row["question_type"] not in ("digit", "colour"):
            continue
        scene = Scene.from_json(row["scene"])
        (target,) = [o for o in scene.objects if list(o.box) == row["target_box"]]
        x0, y0, x1, y1 = target.box
        gx0, gy0, gx1, gy1 = target.glyph_box
        assert x0 <= gx0 < gx1 <= x1 and y0 <= gy0 < gy1 <= y1
        with_glyphs = render_scene(scene, CFG).astype(np.int16)
        without = render_scene(scene, CFG, glyphs=False).astype(np.int16)
        changed = np.abs(with_glyphs - without).max(axis=-1) > 0
        # Every changed pixel lies in some shape's glyph box, and the target's glyph box holds visible ink.
        allowed = np.zeros_like(changed)
        for obj in scene.objects:
            bx0, by0, bx1, by1 = obj.glyph_box
            allowed[by0:by1, bx0:bx1] = True
        assert not (changed & ~allowed).any()
        ink = np.abs(with_glyphs - without)[gy0:gy1, gx0:gx1].max(axis=-1)
        assert (ink > 60).sum() >= 15, "too little of the digit is visible"
        # The stored (JPEG) image is this rendering, up to compression error.
        stored = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB"), dtype=np.int16)
        assert stored.shape == (CFG.image_size, CFG.image_size, 3)
        assert np.abs(stored - with_glyphs).mean() < 4.0
        checked += 1
    assert checked >= 10


def test_scene_invariants():
    images, labels = _digits()
    pools = _glyph_pools(CFG.glyph_pool_fractions)
    test_pool = set(np.concatenate(pools["test"]).tolist())
    train_pool = set(np.concatenate(pools["train"]).tolist())
    assert not train_pool & test_pool
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = sample_scene(rng, CFG, "test")
        pairs = [(o.colour, o.shape) for o in scene.objects]
        digits = [o.digit for o in scene.objects]
        assert len(set(pairs)) == len(pairs) and len(set(digits)) == len(digits)
        assert CFG.min_objects <= len(scene.objects) <= CFG.max_objects
        boxes = [o.box for o in scene.objects] + [d.glyph_box for d in scene.distractors]
        for i, (ax0, ay0, ax1, ay1) in enumerate(boxes):
            assert 0 <= ax0 < ax1 <= CFG.image_size and 0 <= ay0 < ay1 <= CFG.image_size
            for bx0, by0, bx1, by1 in boxes[i + 1 :]:
                assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, "regions overlap"
        for obj in scene.objects:
            assert labels[obj.glyph_index] == obj.digit and obj.glyph_index in test_pool
            side = obj.glyph_box[2] - obj.glyph_box[0]
            assert CFG.glyph_size[0] <= side <= CFG.glyph_size[1]
            assert CFG.shape_size[0] <= obj.box[2] - obj.box[0] <= CFG.shape_size[1]
        assert all(labels[d.glyph_index] == d.digit for d in scene.distractors)
        assert Scene.from_json(scene.to_json()) == scene


def test_generation_is_deterministic_by_seed(rows):
    again = generate_rows(CFG, seed=11, split="train", start=0, stop=8)
    assert again == rows[:8]
    # Row i does not depend on how the split is chunked.
    assert generate_rows(CFG, seed=11, split="train", start=5, stop=8) == rows[5:8]
    other_seed = generate_rows(CFG, seed=12, split="train", start=0, stop=8)
    assert [r["image"]["bytes"] for r in other_seed] != [r["image"]["bytes"] for r in rows[:8]]
    other_split = generate_rows(CFG, seed=11, split="val", start=0, stop=8)
    assert [r["scene"] for r in other_split] != [r["scene"] for r in rows[:8]]


def test_questions_per_image_share_the_image():
    cfg = BenchmarkCfg(questions_per_image=3)
    rows = generate_rows(cfg, seed=1, split="train", start=2, stop=7)  # images 0 (rows 2), 1 (3-5), 2 (6)
    assert [r["question_id"] for r in rows] == [f"train-{i:07d}" for i in range(2, 7)]
    assert rows[1]["image"] == rows[2]["image"] == rows[3]["image"] != rows[0]["image"]
    assert generate_rows(cfg, seed=1, split="train", start=0, stop=7)[2:] == rows


def test_question_types_and_weights():
    cfg = BenchmarkCfg(question_types=("count", "yesno"), question_weights=(1.0, 0.0))
    rng = np.random.default_rng(3)
    scene = sample_scene(rng, cfg)
    assert {make_question(scene, rng, cfg).question_type for _ in range(20)} == {"count"}
    answers = {make_question(scene, rng, cfg, "yesno").answer for _ in range(40)}
    assert answers == {"yes", "no"}
    with pytest.raises(ValueError, match="unknown question type 'size'"):
        make_question(scene, rng, cfg, "size")


def test_make_benchmark_saves_splits_and_manifests(tmp_path):
    out = tmp_path / "bench"
    result = make_benchmark(out, seed=4, sizes={"train": 40, "val": 12, "test": 12}, workers=1)
    loaded = load_benchmark(out)
    assert sorted(loaded) == ["test", "train", "val"]
    for split, size in {"train": 40, "val": 12, "test": 12}.items():
        ds = loaded[split]
        assert len(ds) == size
        assert ds.column_names == [*SCHEMA_COLUMNS, *BENCHMARK_EXTRA_COLUMNS]
        assert ds.features["image"] == datasets.Image()
        assert len(set(ds["question_id"])) == size
        first = ds[0]
        assert first["image"].size == (448, 448) and first["image"].mode == "RGB"
        split_manifest = json.loads((out / split / "manifest.json").read_text())
        assert split_manifest["size"] == size and split_manifest["seed"] == 4
        assert sum(split_manifest["question_type_counts"].values()) == size
        assert split_manifest["question_type_counts"] == {
            t: list(ds["question_type"]).count(t) for t in set(ds["question_type"])
        }
        types = ds["question_type"]
        per_type = {t: [a[0] for a, q in zip(ds["answers"], types) if q == t] for t in set(types)}
        assert split_manifest["majority_baseline"] == {
            t: max(map(answers.count, answers)) / len(answers) for t, answers in per_type.items()
        }
    assert load_benchmark(out, split="val")["question"] == result["val"]["question"]
    manifest = read_manifest(out)
    assert manifest["version"] == BENCHMARK_VERSION and manifest["seed"] == 4
    assert manifest["sizes"] == {"train": 40, "val": 12, "test": 12}
    assert BenchmarkCfg.from_dict(manifest["generator"]) == BenchmarkCfg()
    assert not [p for p in tmp_path.iterdir() if p.name != "bench"], "staging directory left behind"
    with pytest.raises(ValueError, match="split 'dev'.*'test', 'train', 'val'"):
        load_benchmark(out, split="dev")
    with pytest.raises(ValueError, match="exists"):
        make_benchmark(out, sizes={"test": 2})


def test_cli_is_deterministic_across_worker_counts(tmp_path):
    base = ["--train-size", "6", "--val-size", "0", "--test-size", "3", "--seed", "9"]
    assert make_benchmark_main(["--out", str(tmp_path / "a"), "--workers", "1", *base]) == 0
    assert make_benchmark_main(["--out", str(tmp_path / "b"), "--workers", "2", *base]) == 0
    a, b = load_benchmark(tmp_path / "a"), load_benchmark(tmp_path / "b")
    assert sorted(a) == ["test", "train"]
    for split in a:
        raw_a = a[split].cast_column("image", datasets.Image(decode=False)).to_dict()
        raw_b = b[split].cast_column("image", datasets.Image(decode=False)).to_dict()
        assert raw_a == raw_b
    assert read_manifest(tmp_path / "a")["command"].startswith("python -m scripts.make_benchmark --out")


def test_cli_set_reaches_the_generator_and_refuses_unknown_fields(tmp_path):
    out = tmp_path / "p"
    args = ["--out", str(out), "--train-size", "2", "--val-size", "0", "--test-size", "0", "--workers", "1",
            "--image-size", "128", "--min-objects", "2", "--max-objects", "3", "--set", "shape_size=[26,32]",
            "glyph_size=[9,11]", "distractor_glyphs=2"]
    assert make_benchmark_main(args) == 0
    gen = BenchmarkCfg.from_dict(read_manifest(out)["generator"])
    assert (gen.image_size, gen.shape_size, gen.glyph_size, gen.distractor_glyphs) == (128, (26, 32), (9, 11), 2)
    assert load_benchmark(out, "train")[0]["image"].size == (128, 128)
    with pytest.raises(ValueError, match=r"unknown BenchmarkCfg field\(s\) \['glyph_sise'\]"):
        make_benchmark_main(["--out", str(tmp_path / "q"), "--set", "glyph_sise=[9,11]"])
    with pytest.raises(ValueError, match="has its own option"):
        make_benchmark_main(["--out", str(tmp_path / "q"), "--set", "image_size=64"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sizes": {"dev": 5}}, "'dev'"),
        ({"sizes": {"train": 0}}, "positive integer, got 0"),
        ({"sizes": {"train": 2.5}}, "got 2.5"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
    ],
)
def test_make_benchmark_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_benchmark(tmp_path / "x", **kwargs)


def test_make_benchmark_takes_numpy_integers_for_every_count(tmp_path):
    # sizes and seed took NumPy integers; workers refused np.int64(1) as "not a positive integer".
    ds = make_benchmark(tmp_path / "np", seed=np.int64(3), sizes={"train": np.int64(2)}, workers=np.int64(1))
    assert ds["train"].num_rows >= 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_objects": 11}, "max_objects"),
        ({"shapes": ("circle", "hexagon")}, "shapes"),
        ({"colours": ("red", "red")}, "colours"),
        ({"glyph_size": (16, 40)}, "glyph_size"),
        ({"image_size": 100}, "image_size"),
        ({"question_weights": (1.0,)}, "question_weights"),
        ({"image_format": "gif"}, "image_format"),
        # Found by a review: non-integers passed or failed deep in numpy; a tiny glyph share left a split without a
        # handwritten digit (generation then failed with "high <= 0").
        ({"min_objects": 2.5}, r"min_objects=2.5: need an integer"),
        ({"questions_per_image": 1.5}, r"questions_per_image=1.5: need an integer"),
        ({"shape_size": (48.5, 64)}, r"shape_size=\(48.5, 64\): need two integers"),
        ({"glyph_pool_fractions": (0.999, 0.0005, 0.0005)}, r"leaves the val split no handwritten 0"),
        # Found by mutation testing: one pair must stay absent for "no" answers; a 1x1 grid is refused even when
        # max_objects would fit it.
        ({"shapes": ("circle",), "colours": ("red", "blue"), "min_objects": 1, "max_objects": 2}, r"<= 1 \(10 digits"),
        ({"image_size": 100, "min_objects": 1, "max_objects": 1}, r"image_size=100: too small"),
        # Found by a review: a negative clutter count was refused without saying which of the three it was.
        ({"distractor_glyphs": -1}, r"distractor_glyphs=-1: need >= 0"),
        ({"clutter_lines": -3}, r"clutter_lines=-3: need >= 0"),
        ({"clutter_outlines": -1}, r"clutter_outlines=-1: need >= 0"),
        # Non-finite weights passed and every row then failed in numpy ("Probabilities contain NaN"), as did weights
        # whose sum overflows; a non-number failed in float() without naming the field.
        ({"question_weights": (float("nan"), 1, 1, 1)}, r"question_weights=\(nan, 1.0, 1.0, 1.0\): need one finite"),
        ({"question_weights": (float("inf"), 1, 1, 1)}, r"question_weights=\(inf, .*need one finite"),
        ({"question_weights": (1e308, 1e308, 1, 1)}, r"question_weights=.*need one finite"),
        ({"question_weights": ("a", 1, 1, 1)}, r"question_weights=\('a', 1, 1, 1\): need one finite"),
        # NaN or inf shares failed in round() ("cannot convert float NaN to integer"), a string with a TypeError.
        ({"glyph_pool_fractions": (float("nan"), 0.15, 0.15)}, r"glyph_pool_fractions=\(nan, 0.15, 0.15\): need three"),
        ({"glyph_pool_fractions": (float("inf"), 0.15, 0.15)}, r"glyph_pool_fractions=\(inf, .*need three"),
        ({"glyph_pool_fractions": ("x", 1, 1)}, r"glyph_pool_fractions=\('x', 1, 1\): need three"),
        # A repeated type was accepted and silently doubled its share (shapes and colours must already be distinct).
        ({"question_types": ("digit", "digit")}, r"question_types=\('digit', 'digit'\): need distinct"),
    ],
)
def test_cfg_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BenchmarkCfg(**kwargs)


def test_cfg_round_trip_rejects_unknown_keys():
    assert BenchmarkCfg.from_dict(BenchmarkCfg(shapes=DEFAULT_SHAPES[:3]).to_dict()).shapes == DEFAULT_SHAPES[:3]
    with pytest.raises(ValueError, match="unknown BenchmarkCfg field.*'colors'"):
        BenchmarkCfg.from_dict({"colors": ["red"]})


def test_make_question_about_each_object():
    from training.benchmark import BenchmarkCfg, make_question_about, sample_scene

    cfg = BenchmarkCfg()
    rng = np.random.default_rng(3)
    scene = sample_scene(rng, cfg, "test")
    assert len(scene.objects) >= 2
    for obj in scene.objects:
        q = make_question_about(scene, obj, rng, cfg, "digit")
        assert q.question == f"what digit is in the {obj.colour} {obj.shape}?"
        assert q.answer == str(obj.digit) and tuple(q.target_box) == tuple(obj.box)
        c = make_question_about(scene, obj, rng, cfg, "colour")
        assert c.answer == obj.colour and tuple(c.target_box) == tuple(obj.box)
        y = make_question_about(scene, obj, rng, cfg, "yesno")  # about this object: it is there
        assert y.answer == "yes" and obj.colour in y.question and tuple(y.target_box) == tuple(obj.box)
    # count is about the whole scene (asked of one object it answered 1 where the image held 2); a foreign object
    # has no answer in this scene.
    with pytest.raises(ValueError, match="got 'count'"):
        make_question_about(scene, scene.objects[0], rng, cfg, "count")
    other = sample_scene(np.random.default_rng(99), cfg, "test").objects[0]
    if other not in scene.objects:
        with pytest.raises(ValueError, match="not one of the scene's objects"):
            make_question_about(scene, other, rng, cfg, "digit")


# Tests below were added by a mutation-testing review: each kills a small plausible bug the tests above let through.


def test_splits_differ_in_layout_not_only_in_handwriting(rows):
    # The split id is part of each image's seed: val image i is not train image i with other handwriting.
    other_split = generate_rows(CFG, seed=11, split="val", start=0, stop=8)
    layout = [[o["box"] for o in json.loads(r["scene"])["objects"]] for r in other_split]
    assert layout != [[o["box"] for o in json.loads(r["scene"])["objects"]] for r in rows[:8]]


def test_glyph_pools_are_disjoint_and_cover_every_digit_image():
    _, labels = _digits()
    pools = _glyph_pools(CFG.glyph_pool_fractions)
    flat = {split: np.concatenate(parts).tolist() for split, parts in pools.items()}
    assert sum(len(v) for v in flat.values()) == len(set().union(*map(set, flat.values()))) == len(labels)
    for split, parts in pools.items():
        assert [set(labels[p].tolist()) for p in parts] == [{d} for d in range(10)], split


def test_distractors_and_shapes_keep_their_split_handwriting_and_cell_margins():
    pools = _glyph_pools(CFG.glyph_pool_fractions)
    test_pool = set(np.concatenate(pools["test"]).tolist())
    edges = np.linspace(0, CFG.image_size, CFG.grid + 1).round().astype(int)
    rng = np.random.default_rng(5)
    for _ in range(200):
        scene = sample_scene(rng, CFG, "test")
        assert all(d.glyph_index in test_pool for d in scene.distractors), "distractor handwriting from another split"
        for obj in scene.objects:
            # Each shape sits in one grid cell, at least _MARGIN px clear of the cell's border on every side.
            x0, y0, x1, y1 = obj.box
            col, row = np.searchsorted(edges, x0, side="right") - 1, np.searchsorted(edges, y0, side="right") - 1
            assert edges[col] + _MARGIN <= x0 and x1 <= edges[col + 1] - _MARGIN, obj
            assert edges[row] + _MARGIN <= y0 and y1 <= edges[row + 1] - _MARGIN, obj


def test_shapes_are_drawn_inside_their_boxes_and_around_their_glyphs():
    rng = np.random.default_rng(8)
    triangles = 0
    for _ in range(12):
        scene = sample_scene(rng, CFG, "val")
        bare = render_scene(dataclasses.replace(scene, objects=()), CFG).astype(np.int16)
        drawn = render_scene(scene, CFG, glyphs=False).astype(np.int16)
        changed = np.abs(drawn - bare).max(axis=-1) > 0
        inside = np.zeros_like(changed)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            inside[y0:y1, x0:x1] = True
            # The box is tight: the shape reaches its first and last row and column.
            assert changed[y0:y1, x0].any() and changed[y0:y1, x1 - 1].any(), obj
            assert changed[y0, x0:x1].any() and changed[y1 - 1, x0:x1].any(), obj
            # The glyph sits on the shape's fill, not on the background.
            gx0, gy0, gx1, gy1 = obj.glyph_box
            assert changed[gy0:gy1, gx0:gx1].mean() >= 0.9, obj
            triangles += obj.shape == "triangle"
        assert not (changed & ~inside).any(), "a shape is drawn outside its [x0, y0, x1, y1) box"
    assert triangles >= 3


def test_colour_question_uses_the_right_article():
    obj = SceneObject("circle", "orange", 8, 0, (0, 0, 48, 48), (16, 16, 32, 32))
    scene = Scene(448, 0, (obj,))
    q = make_question(scene, np.random.default_rng(0), CFG, "colour")
    assert q.question == "what colour is the shape holding an 8?" and q.answer == "orange"
    seven = dataclasses.replace(obj, digit=7)
    q = make_question(dataclasses.replace(scene, objects=(seven,)), np.random.default_rng(0), CFG, "colour")
    assert q.question == "what colour is the shape holding a 7?"


def test_cli_options_reach_the_generator(tmp_path):
    out = tmp_path / "o"
    args = ["--out", str(out), "--train-size", "4", "--val-size", "0", "--test-size", "0", "--workers", "1",
            "--image-size", "64", "--min-objects", "2", "--max-objects", "3", "--question-types", "count, yesno",
            "--questions-per-image", "2", "--image-format", "png", "--jpeg-quality", "70", "--noise", "0",
            "--set", "shape_size=[16,20]", "glyph_size=[6,8]"]
    assert make_benchmark_main(args) == 0
    gen = BenchmarkCfg.from_dict(read_manifest(out)["generator"])
    assert (gen.question_types, gen.questions_per_image, gen.image_format, gen.jpeg_quality, gen.noise_amplitude) == (
        ("count", "yesno"), 2, "png", 70, 0)
    train = load_benchmark(out, "train").cast_column("image", datasets.Image(decode=False))
    assert train[0]["image"] == train[1]["image"] != train[2]["image"]
    assert set(train["question_type"]) <= {"count", "yesno"}


def test_cli_refuses_negative_split_sizes(tmp_path):
    with pytest.raises(ValueError, match=r"split sizes must be >= 0.*'val': -1"):
        make_benchmark_main(["--out", str(tmp_path / "n"), "--train-size", "1", "--val-size", "-1", "--test-size", "0",
                             "--workers", "1"])
    assert not (tmp_path / "n").exists()


def test_glyph_ink_contrasts_with_every_fill():
    def luma(rgb):
        return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]

    # Black ink on light fills, white on dark ones: the digit stays legible on every colour.
    for name, fill in DEFAULT_COLOURS.items():
        assert abs(luma(_ink_for(fill)) - luma(fill)) >= 120, name
