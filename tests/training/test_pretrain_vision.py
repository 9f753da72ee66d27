"""scripts/pretrain_vision.py: trains an open_clip tower on the benchmark's scene records and writes a checkpoint that
``vision.pretrained=<file>`` loads through open_clip, weight for weight."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark

    path = tmp_path_factory.mktemp("bench") / "mini"
    make_benchmark(path, seed=0, sizes={"train": 12, "test": 4}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    return path


def test_pool_boxes_averages_the_tokens_inside():
    from scripts.pretrain_vision import pool_boxes

    f = torch.arange(16.0).view(1, 1, 4, 4)  # token (r, c) holds 4r + c
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.76, 0.76, 0.9, 0.9]])  # top-left 2x2; a box holding no centre
    out = pool_boxes(f, torch.tensor([0, 0]), boxes)
    assert out[:, 0].tolist() == [(0 + 1 + 4 + 5) / 4, 15.0]  # the second falls back to the token at its centre


def test_pretrain_writes_a_checkpoint_open_clip_loads(bench, tmp_path):
    from safetensors.torch import load_file

    from models.builders import build_model
    from scripts.pretrain_vision import main

    out = tmp_path / "vit.safetensors"
    res = main(["--data", str(bench), "--preset", "tiny", "--steps", "3", "--batch-size", "4", "--eval-images", "4",
                "--out", str(out)])
    assert out.is_file() and res["steps"] == 3 and res["test"]["objects"] > 0
    assert all(0 <= res["test"][k] <= 1 for k in ("digit", "colour", "shape"))
    saved = load_file(str(out))
    assert any(k.startswith("visual.") for k in saved) and any(not k.startswith("visual.") for k in saved)
    model, _ = build_model("tiny", [f"vision.pretrained={out}"])
    vis = model.vision.visual.state_dict()
    assert vis and all(torch.equal(v, saved["visual." + k]) for k, v in vis.items())
    fresh, _ = build_model("tiny")
    assert any(not torch.equal(v, fresh.vision.visual.state_dict()[k]) for k, v in vis.items())  # it trained
    with pytest.raises(ValueError, match="must end in .safetensors"):
        main(["--data", str(bench), "--preset", "tiny", "--out", str(tmp_path / "vit.pt")])
    with pytest.raises(ValueError, match="--steps must be >= 1"):
        main(["--data", str(bench), "--preset", "tiny", "--steps", "0", "--out", str(out)])
    # A batch larger than the train split never filled: the run hung (only full batches are drawn).
    n_train = len(__import__("datasets").load_from_disk(str(bench))["train"])
    with pytest.raises(ValueError, match=f"--batch-size {n_train + 1} is larger than the train split"):
        main(["--data", str(bench), "--preset", "tiny", "--batch-size", str(n_train + 1), "--out", str(out)])


def test_a_model_built_on_pretrained_weights_reloads_without_their_file(bench, tmp_path):
    # A checkpoint's config names vision.pretrained=<file>; rebuilding it to load the checkpoint must not need that
    # file (it may live on another machine): architecture_only drops it, and every weight comes from the checkpoint.
    from models.builders import architecture_only, build_model, model_dict
    from models.pretrained import load_pretrained, save_pretrained
    from scripts.pretrain_vision import main

    vit = tmp_path / "vit.safetensors"
    main(["--data", str(bench), "--preset", "tiny", "--steps", "2", "--batch-size", "4", "--eval-images", "4",
          "--out", str(vit)])
    cfg = model_dict("tiny", {"vision": {"pretrained": str(vit)}})
    assert architecture_only(cfg)["vision"]["pretrained"] is None and cfg["vision"]["pretrained"] == str(vit)
    model, processor = build_model(cfg)
    save_pretrained(model, processor, cfg, tmp_path / "export", dtype="float32")
    vit.unlink()
    loaded, _ = load_pretrained(tmp_path / "export")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def _row(objects, size=64, image=None):
    return {"scene": json.dumps({"size": size, "objects": objects}), "image": image}


def _obj(colour="red", shape="circle", digit=3, box=(0, 0, 32, 32), glyph_box=(8, 8, 16, 16)):
    return {"colour": colour, "shape": shape, "digit": digit, "box": list(box), "glyph_box": list(glyph_box)}


def test_object_targets_reads_every_object_and_refuses_what_it_cannot_name():
    from scripts.pretrain_vision import object_targets

    rows = [_row([_obj()]), {"scene": {"size": 32, "objects": [_obj("blue", "square", 7, (0, 16, 32, 32),
                                                                    (4, 20, 12, 28))]}}]
    t = object_targets(rows, ["red", "blue"], ["circle", "square"])
    assert t["image"].tolist() == [0, 1] and t["digit"].tolist() == [3, 7]
    assert t["colour"].tolist() == [0, 1] and t["shape"].tolist() == [0, 1]
    assert t["box"].tolist() == [[0, 0, 0.5, 0.5], [0, 0.5, 1, 1]]  # normalised by each scene's own size
    assert t["glyph_box"].tolist() == [[0.125, 0.125, 0.25, 0.25], [0.125, 0.625, 0.375, 0.875]]
    with pytest.raises(ValueError, match="row 'q7' has no scene record"):
        object_targets([{"question_id": "q7", "scene": None}], ["red"], ["circle"])
    with pytest.raises(ValueError, match="circle/green outside"):  # a known shape in an unknown colour
        object_targets([_row([_obj("green")])], ["red"], ["circle"])
    with pytest.raises(ValueError, match="star/red outside"):
        object_targets([_row([_obj(shape="star")])], ["red"], ["circle"])


def test_pool_boxes_edges_and_a_non_square_grid():
    from scripts.pretrain_vision import pool_boxes

    f = torch.arange(8.0).view(1, 1, 2, 4)  # 2 x 4 tokens: (r, c) holds 4r + c; centres y .25 .75, x .125 .. .875
    # A box starting exactly on a centre holds it, one ending exactly on a centre does not; the token at the box's
    # centre always counts: (1, 1) for the second box, the only one for the third.
    out = pool_boxes(f, torch.tensor([0, 0, 0]), torch.tensor([[0.125, 0.0, 0.625, 0.5], [0.0, 0.25, 0.5, 0.75],
                                                                [0.8, 0.8, 0.85, 0.9]]))
    assert out[:, 0].tolist() == [(0 + 1) / 2, (0 + 1 + 5) / 3, 7.0]  # the last: the token at its centre only


def test_heads_read_the_digit_from_the_glyph_and_colour_and_shape_from_the_box():
    from scripts.pretrain_vision import _Heads, pool_boxes

    torch.manual_seed(0)
    heads = _Heads(3, 4, 5)
    f = torch.randn(2, 3, 4, 4)
    t = {"image": torch.tensor([1, 0]), "glyph_box": torch.tensor([[0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 1.0, 1.0]]),
         "box": torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.25, 0.0, 0.75, 1.0]])}
    out = heads(f, t)
    g, b = pool_boxes(f, t["image"], t["glyph_box"]), pool_boxes(f, t["image"], t["box"])
    assert torch.allclose(out["digit"], heads.digit(g)) and torch.allclose(out["colour"], heads.colour(b))
    assert torch.allclose(out["shape"], heads.shape(b)) and out["shape"].shape == (2, 5)


def test_batches_are_always_full():
    from scripts.pretrain_vision import _batches

    it = _batches(list(range(5)), 2, torch.Generator().manual_seed(0))
    got = [next(it) for _ in range(6)]
    assert all(len(b) == 2 for b in got) and all(len(set(b)) == 2 for b in got)


def test_evaluate_counts_the_first_n_rows_objects():
    # A stub tower whose features are the image itself and heads that read them: every answer is exactly right when
    # each row's objects are scored against its own image, over the first n rows only.
    from scripts.pretrain_vision import _evaluate

    class Proc:
        def preprocess_images(self, images):
            return torch.stack(images)

    class Tower:
        def token_grid_features(self, pixels):
            return pixels

    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, features, t):
            hit = features[t["image"], 0, 0, 0].long()  # each image holds its objects' digit
            return {k: torch.nn.functional.one_hot(hit, 10).float() for k in ("digit", "colour", "shape")}

    rows = []
    for i in range(5):
        d = i + 1
        rows.append(_row([_obj("red", "circle", d)] * (i + 1), image=torch.full((1, 2, 2), float(d))))
    # Colour and shape ids are 0 and the stub says d: only the digit is right.
    res = _evaluate(Tower(), Heads(), Proc(), rows, ["red"], ["circle"], n=3, batch=2)
    assert res == {"digit": 1.0, "colour": 0.0, "shape": 0.0, "objects": 1 + 2 + 3}


@pytest.mark.parametrize("flags, match", [(["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
                                          (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
                                          (["--lr", "0"], "--lr must be a finite number > 0, got 0"),
                                          (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
                                          (["--eval-images", "0"], "--eval-images must be >= 1, got 0"),
                                          (["--device", "tpu"], "--device must be auto, cpu or cuda, got 'tpu'"),
                                          (["--preset", "llava15_7b"], "this script trains open_clip towers")])
def test_pretrain_refuses_bad_flags(tmp_path, flags, match):
    from scripts.pretrain_vision import main

    with pytest.raises(ValueError, match=match):
        main(["--data", str(tmp_path), "--out", str(tmp_path / "v.safetensors"), *flags])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_pretrain_refuses_cuda_without_cuda(tmp_path):
    from scripts.pretrain_vision import main

    with pytest.raises(ValueError, match="--device cuda but torch.cuda.is_available"):
        main(["--data", str(tmp_path), "--out", str(tmp_path / "v.safetensors"), "--device", "cuda"])


def test_pretrain_refuses_data_without_a_train_split_and_takes_a_batch_of_the_whole_split(bench, tmp_path):
    import datasets

    from scripts.pretrain_vision import main

    root = datasets.load_from_disk(str(bench))
    datasets.DatasetDict({"test": root["test"]}).save_to_disk(str(tmp_path / "test_only"))
    with pytest.raises(ValueError, match="is not a generated benchmark with a train split and scene records"):
        main(["--data", str(tmp_path / "test_only"), "--preset", "tiny", "--out", str(tmp_path / "v.safetensors")])
    n = len(root["train"])
    # Every step sees the whole split, so the second step's loss is lower only if the first one trained.
    res = main(["--data", str(bench), "--preset", "tiny", "--steps", "2", "--batch-size", str(n), "--eval-images", "2",
                "--lr", "1e-2", "--out", str(tmp_path / "v.safetensors")])
    assert res["steps"] == 2 and res["last_loss"] < res["first_loss"] - 1e-3, res
