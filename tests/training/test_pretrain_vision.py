"""scripts/pretrain_vision.py: trains an open_clip tower on the benchmark's scene records and writes a checkpoint that
``vision.pretrained=<file>`` loads through open_clip, weight for weight."""

from __future__ import annotations

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
