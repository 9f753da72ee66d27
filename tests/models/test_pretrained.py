"""``models.pretrained`` + ``scripts/export_model.py`` + the demo's trained-model mode, on the tiny preset."""

from __future__ import annotations

import json

import pytest
import torch

from models.builders import build_model, dataclass_to_dict, load_model_cfg
from models.pretrained import load_pretrained, save_pretrained



def _tiny():
    torch.manual_seed(0)
    cfg = dataclass_to_dict(load_model_cfg("tiny"))
    model, processor = build_model(cfg)
    return model.eval(), processor, cfg


def _logits(model, processor):
    g = torch.Generator().manual_seed(1)
    img = (torch.rand(2, *processor.image_size, 3, generator=g) * 255).to(torch.uint8).numpy()
    batch = processor(list(img), ["what digit is in the red circle?", "how many squares?"])
    with torch.no_grad():
        return model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                     query_input_ids=batch["query_input_ids"],
                     query_attention_mask=batch["query_attention_mask"]).logits


def test_float32_roundtrip_is_exact(tmp_path):
    model, processor, cfg = _tiny()
    save_pretrained(model, processor, cfg, tmp_path / "m", metadata={"note": "test"})
    loaded, proc2 = load_pretrained(tmp_path / "m")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(_logits(model, processor), _logits(loaded, proc2))
    assert proc2.budget == processor.budget and proc2.prompt_template == processor.prompt_template
    info = json.loads((tmp_path / "m" / "config.json").read_text())
    assert info["format"] == "arr_coc_pretrained" and info["metadata"] == {"note": "test"}
    assert not (tmp_path / ".m.tmp").exists()


def test_bf16_export_halves_the_file_and_loads_the_rounded_weights(tmp_path):
    model, processor, cfg = _tiny()
    save_pretrained(model, processor, cfg, tmp_path / "f32")
    save_pretrained(model, processor, cfg, tmp_path / "bf16", dtype="bfloat16")
    s32 = (tmp_path / "f32" / "model.safetensors").stat().st_size
    s16 = (tmp_path / "bf16" / "model.safetensors").stat().st_size
    assert 0.45 < s16 / s32 < 0.56
    loaded, _ = load_pretrained(tmp_path / "bf16")
    for k, v in model.state_dict().items():
        w = loaded.state_dict()[k]
        want = v.to(torch.bfloat16).to(w.dtype) if v.is_floating_point() else v
        assert torch.equal(w, want), k


def test_bf16_export_keeps_the_bandits_float64_statistics(tmp_path):
    """Rounding the ridge statistics to bf16 changed the loaded bandit's A^-1 by 70% and its allocations."""
    torch.manual_seed(0)
    cfg = dataclass_to_dict(load_model_cfg("tiny", ["arr_coc.allocator=bandit",
                                                    'arr_coc.allocator_kwargs={"levels": [1, 2, 4, 6]}']))
    model, processor = build_model(cfg)
    model.eval()
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        img = (torch.rand(8, *processor.image_size, 3, generator=g) * 255).to(torch.uint8).numpy()
        b = processor(list(img), ["what digit is in the red circle?"] * 8)
        with torch.no_grad():
            model(b["pixel_values"], b["input_ids"], b["attention_mask"], query_input_ids=b["query_input_ids"],
                  query_attention_mask=b["query_attention_mask"])
        model.arr_coc.attending.update(torch.rand(8, generator=g))
    save_pretrained(model, processor, cfg, tmp_path / "bf16", dtype="bfloat16")
    loaded, _ = load_pretrained(tmp_path / "bf16")
    stats = [k for k, v in model.state_dict().items() if v.dtype == torch.float64]
    assert any(k.endswith("A_inv") for k in stats) and any(k.endswith("theta") for k in stats)
    for k in stats:
        assert torch.equal(loaded.state_dict()[k], model.state_dict()[k]), k


def test_errors_name_the_problem(tmp_path):
    model, processor, cfg = _tiny()
    with pytest.raises(ValueError, match="not a pretrained ARR-COC folder"):
        load_pretrained(tmp_path / "nowhere")
    hub = json.loads(json.dumps(cfg))
    hub["llm"]["name_or_path"] = "llava-hf/llava-1.5-7b-hf"
    with pytest.raises(ValueError, match="llava-hf/llava-1.5-7b-hf"):
        save_pretrained(model, processor, hub, tmp_path / "hub")
    with pytest.raises(ValueError, match="float8"):
        save_pretrained(model, processor, cfg, tmp_path / "x", dtype="float8")
    save_pretrained(model, processor, cfg, tmp_path / "ok")
    info = json.loads((tmp_path / "ok" / "config.json").read_text())
    info["format"] = "something_else"
    (tmp_path / "ok" / "config.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="something_else"):
        load_pretrained(tmp_path / "ok")
    bad = json.loads(json.dumps(cfg))
    bad["pos_embed"] = False  # a model without the position table: the saved weights no longer fit
    save_pretrained(model, processor, cfg, tmp_path / "ok2")
    info = json.loads((tmp_path / "ok2" / "config.json").read_text())
    info["model"]["pos_embed"] = False
    (tmp_path / "ok2" / "config.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="unexpected"):
        load_pretrained(tmp_path / "ok2")
    # An override that changes a weight's shape is a ValueError naming it (it was load_state_dict's RuntimeError).
    with pytest.raises(ValueError, match=r"pos_embed\.table: \(64, 32\) vs the model's \(16, 32\)"):
        load_pretrained(tmp_path / "ok2", model_overrides={"pos_embed": True, "pos_grid": [4, 4]})


def test_export_from_a_training_run_then_trained_demo(tmp_path):
    from scripts.demo import main as demo
    from scripts.export_model import main as export
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark
    from training.train import main as train

    data = tmp_path / "bench"
    make_benchmark(data, seed=0, sizes={"train": 16, "val": 4}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    run = tmp_path / "run"
    train(["--config", "configs/train/tiny.yaml", f"output_dir={run}", f"data.path={data}", "data.generate=false",
           "dist.fsdp=off", "train.max_steps=2", "train.batch_size=4"])
    res = export(["--run", str(run), "--out", str(tmp_path / "w"), "--dtype", "bfloat16"])
    assert res["step"] == 2 and res["weights_mib"] > 0
    meta = json.loads((tmp_path / "w" / "config.json").read_text())["metadata"]
    assert meta["step"] == 2 and meta["benchmark"]["image_size"] == 64  # the demo draws scenes like the training's
    assert meta["train_seed"] == 0
    # An export over --max-mb is not written, and the folder already at --out stays (it was deleted).
    before = (tmp_path / "w" / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit):
        export(["--run", str(run), "--out", str(tmp_path / "w"), "--dtype", "float32", "--max-mb", "1e-6"])
    assert (tmp_path / "w" / "model.safetensors").read_bytes() == before
    assert not list(tmp_path.glob(".w.*"))  # no staging folder left behind
    # A size limit that is not a positive number is refused before anything is read (nan compared False: no check).
    for bad in ("nan", "0", "-1", "inf"):
        with pytest.raises(ValueError, match=f"--max-mb must be a positive number of MiB, got {bad}"):
            export(["--run", str(run), "--out", str(tmp_path / "w"), "--max-mb", bad])
    assert (tmp_path / "w" / "model.safetensors").read_bytes() == before
    # Re-exporting an exported folder (to float32) keeps where it came from.
    export(["--run", str(tmp_path / "w"), "--out", str(tmp_path / "w32"), "--dtype", "float32"])
    meta32 = json.loads((tmp_path / "w32" / "config.json").read_text())["metadata"]
    assert meta32["train_seed"] == 0 and meta32["checkpoint"] == meta["checkpoint"] and meta32["step"] == 2
    out = demo(["--weights", str(tmp_path / "w"), "--out", str(tmp_path / "demo"), "--images", "2"])
    assert [p.name for p in out["pngs"]] == ["trained_image0.png", "trained_image1.png"]
    assert all(p.stat().st_size > 0 for p in out["pngs"])
    rows = out["rows"]
    assert len(rows) == 4 and [r["image"] for r in rows] == [0, 0, 1, 1]
    for r in rows:
        assert r["question"].startswith("what digit is in the") and r["answer"].isdigit()
        assert sum(r["budgets"]) == 32 and 0 <= r["tokens_in_box"] <= 1  # the tiny preset's exact budget
    assert rows[0]["question"] != rows[1]["question"]  # two different shapes of the same image
    with pytest.raises(ValueError, match="not a trained model folder"):
        demo(["--weights", str(tmp_path / "missing"), "--out", str(tmp_path / "demo2")])


def test_export_records_the_run_writes_its_dtype_and_replaces_out(tmp_path, monkeypatch):
    # A training checkpoint laid out by hand: its config names a seed, a fine-tune's start and budgets, and a
    # generated benchmark whose manifest holds the generator settings the demo needs.
    from safetensors import safe_open
    from safetensors.torch import save_file

    from scripts.export_model import main as export

    model, processor, cfg = _tiny()
    (tmp_path / "ck").mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "ck" / "model.safetensors"))
    gen = {"image_size": 64, "min_objects": 2}
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "manifest.json").write_text(json.dumps({"generator": gen}))
    train = {"seed": 3, "init_from": "/runs/base", "budget_fractions": [0.5, 1.0]}
    data = {"source": "benchmark", "path": str(tmp_path / "bench")}
    (tmp_path / "ck" / "trainer_state.json").write_text(
        json.dumps({"step": 5, "config": {"model_preset": "tiny", "train": train, "data": data}}))
    monkeypatch.chdir(tmp_path)
    res = export(["--run", "ck", "--out", "w", "--dtype", "float32"])
    size = (tmp_path / "w" / "model.safetensors").stat().st_size
    assert res == {"out": "w", "weights_mib": round(size / 2**20, 2), "step": 5, "dtype": "float32",
                   "params": sum(v.numel() for v in model.state_dict().values())}
    meta = json.loads((tmp_path / "w" / "config.json").read_text())["metadata"]
    assert meta == {"checkpoint": str((tmp_path / "ck").resolve()), "step": 5, "train_seed": 3, "benchmark": gen,
                    "init_from": "/runs/base", "budget_fractions": [0.5, 1.0]}

    def dtypes(folder):
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return {f.get_tensor(k).dtype for k in f.keys()}

    assert torch.float32 in dtypes(tmp_path / "w") and torch.bfloat16 not in dtypes(tmp_path / "w")
    # A weights file exactly at --max-mb is not over it.
    export(["--run", "ck", "--out", "w2", "--dtype", "float32", "--max-mb", repr(size / 2**20)])
    # --out is replaced when it exists.
    export(["--run", "ck", "--out", "w", "--dtype", "bfloat16"])
    assert torch.bfloat16 in dtypes(tmp_path / "w") and torch.float32 not in dtypes(tmp_path / "w")
    # An exported folder that does not know its checkpoint is its own source.
    save_pretrained(model, processor, cfg, tmp_path / "plain", metadata={"checkpoint": None})
    export(["--run", "plain", "--out", "w3"])
    assert json.loads((tmp_path / "w3" / "config.json").read_text())["metadata"]["checkpoint"] == str(
        (tmp_path / "plain").resolve())


def test_shipped_small_model_is_the_demos_default_reads_digits_and_follows_the_question(tmp_path):
    # weights/arr_coc_small is the grounded `small` model trained on CPU from a frozen pretrained-style tower (README,
    # "On the CPU: `small` scale", seed 0), fine-tuned for every budget (README "One model for every budget"): `make
    # demo`'s default. Its budgets must differ between two questions about the same image, favour the patches the
    # queried shape overlaps, and it reads digits: 10 answers are possible, so 3 or more right of 8 happens by chance
    # with probability 0.04. It does so at its training budget (25%) and at 50%, which only the fine-tune trained.
    from scripts.demo import DEFAULT_WEIGHTS
    from scripts.demo import main as demo

    shipped = DEFAULT_WEIGHTS[0]
    assert shipped.name == "arr_coc_small" and (shipped / "config.json").is_file()
    assert (shipped / "model.safetensors").stat().st_size <= 25 * 2**20
    out = demo(["--out", str(tmp_path), "--images", "4"])  # --weights auto
    assert out["weights"] == shipped
    rows = out["rows"]
    assert len(rows) == 8 and all(sum(r["budgets"]) == 36 for r in rows)  # the small preset's exact budget
    differ = sum(rows[i]["budgets"] != rows[i + 1]["budgets"] for i in range(0, 8, 2))
    assert differ >= 3, [r["budgets"] for r in rows]
    share = sum(r["tokens_in_box_patches"] for r in rows) / len(rows)
    area = sum(r["box_patches_area"] for r in rows) / len(rows)
    assert share > area + 0.2, (share, area)
    right = sum(r["prediction"] == r["answer"] for r in rows)
    assert right >= 3, [(r["prediction"], r["answer"]) for r in rows]
    half = demo(["--out", str(tmp_path / "half"), "--images", "4", "--token-fraction", "0.5"])["rows"]
    assert all(sum(r["budgets"]) == 72 for r in half)
    assert sum(r["prediction"] == r["answer"] for r in half) >= 3, [(r["prediction"], r["answer"]) for r in half]
    with pytest.raises(ValueError, match=r"--token-fraction must lie in \(0, 1\], got 0"):
        demo(["--out", str(tmp_path / "bad"), "--token-fraction", "0"])
    with pytest.raises(ValueError, match="--token-fraction 0.5 needs trained weights"):
        demo(["--out", str(tmp_path / "bad"), "--weights", "none", "--token-fraction", "0.5"])


def test_shipped_bench_model_follows_the_question(tmp_path):
    # weights/arr_coc_bench is the grounded `bench` model trained on an H100 (README, "On the GPU"), the demo's
    # second choice. At most 25 MB; exactly 196 tokens per image; different budgets for different questions about
    # the same image, with the queried shape's patches getting well over their share.
    from scripts.demo import DEFAULT_WEIGHTS
    from scripts.demo import main as demo

    shipped = DEFAULT_WEIGHTS[1]
    assert shipped.name == "arr_coc_bench" and (shipped / "config.json").is_file()
    assert (shipped / "model.safetensors").stat().st_size <= 25 * 10**6
    out = demo(["--weights", str(shipped), "--out", str(tmp_path), "--images", "3"])
    assert out["weights"] == shipped
    rows = out["rows"]
    assert len(rows) == 6 and all(sum(r["budgets"]) == 196 for r in rows)  # the bench preset's exact budget
    assert all(rows[i]["budgets"] != rows[i + 1]["budgets"] for i in range(0, 6, 2))
    share = sum(r["tokens_in_box_patches"] for r in rows) / len(rows)
    area = sum(r["box_patches_area"] for r in rows) / len(rows)
    assert share > 2.5 * area, (share, area)


def test_weights_follow_silences_only_the_random_init_notice(caplog):
    import logging

    from models.vision import weights_follow

    with caplog.at_level(logging.WARNING), weights_follow():
        logging.warning("No pretrained weights loaded for model 'x'. Model initialized randomly.")
        logging.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
    with caplog.at_level(logging.WARNING):
        logging.warning("No pretrained weights loaded for model 'y'.")
    assert "No pretrained weights loaded for model 'y'." in caplog.text  # only inside the context


def test_demo_without_weights_says_so_and_shows_the_untrained_layer(tmp_path, monkeypatch, capsys):
    # With --weights auto and no weights folder present, the demo says where it looked and falls back to the
    # untrained layer; --token-fraction then has no trained model to apply to and is refused.
    import scripts.demo as demo_mod

    monkeypatch.setattr(demo_mod, "DEFAULT_WEIGHTS", (tmp_path / "absent_small", tmp_path / "absent_bench"))
    demo_mod.main(["--out", str(tmp_path / "demo"), "--images", "1"])
    out = capsys.readouterr().out
    assert "No trained weights in" in out and str(tmp_path / "absent_small") in out
    assert (tmp_path / "demo" / "budgets_image0.png").is_file()
    with pytest.raises(ValueError, match="--token-fraction 0.5 needs trained weights"):
        demo_mod.main(["--out", str(tmp_path / "demo2"), "--images", "1", "--token-fraction", "0.5"])


def test_export_dtypes_name_torch_dtypes_and_keep_integer_buffers(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    cfg = dataclass_to_dict(load_model_cfg("tiny", ["arr_coc.allocator=bandit",
                                                    'arr_coc.allocator_kwargs={"levels": [1, 2, 4, 6]}']))
    model, processor = build_model(cfg)
    save_pretrained(model, processor, cfg, tmp_path / "f16", dtype=torch.float16)  # a torch dtype works too
    assert json.loads((tmp_path / "f16" / "config.json").read_text())["dtype"] == "float16"
    saved = load_file(str(tmp_path / "f16" / "model.safetensors"))
    assert saved["llava.lm_head.weight"].dtype == torch.float16
    assert saved["arr_coc.attending.policy.steps"].dtype == torch.int64  # counts are never cast
    assert saved["arr_coc.attending.policy.gram"].dtype == torch.float64


def test_load_compute_dtype_and_eval_mode(tmp_path):
    model, processor, cfg = _tiny()
    model.train()
    save_pretrained(model, processor, cfg, tmp_path / "m", dtype="bfloat16")
    loaded, _ = load_pretrained(tmp_path / "m")
    assert not loaded.training and loaded.llava.lm_head.weight.dtype == torch.float32
    half, _ = load_pretrained(tmp_path / "m", compute_dtype=torch.bfloat16)
    assert half.llava.lm_head.weight.dtype == torch.bfloat16
    assert half.arr_coc.knowing.q_proj.weight.dtype == torch.float32  # ArrCoc keeps computing in float32
    cfg16 = json.loads(json.dumps(cfg))
    cfg16["llm"]["dtype"] = "float16"
    save_pretrained(model, processor, cfg16, tmp_path / "m16")
    own, _ = load_pretrained(tmp_path / "m16", compute_dtype=None)  # the config's llm.dtype
    assert own.llava.lm_head.weight.dtype == torch.float16


def test_saving_replaces_the_folder_and_clears_a_crashed_save(tmp_path):
    model, processor, cfg = _tiny()
    out = tmp_path / "a" / "b" / "m"  # parents are created
    save_pretrained(model, processor, cfg, out)
    (out / "stray.txt").write_text("from an older export")
    (tmp_path / "a" / "b" / ".m.tmp").mkdir()  # a save that crashed half-way
    (tmp_path / "a" / "b" / ".m.tmp" / "partial").write_text("x")
    save_pretrained(model, processor, cfg, out, metadata={"round": 2, "run": tmp_path / "run"})
    assert not (out / "stray.txt").exists() and not (tmp_path / "a" / "b" / ".m.tmp").exists()
    meta = json.loads((out / "config.json").read_text())["metadata"]
    assert meta == {"round": 2, "run": str(tmp_path / "run")}  # a path is written as its text


def test_load_refuses_half_folders_newer_versions_and_missing_weights(tmp_path):
    model, processor, cfg = _tiny()
    save_pretrained(model, processor, cfg, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").rename(tmp_path / "weights.safetensors")
    with pytest.raises(ValueError, match="not a pretrained ARR-COC folder"):
        load_pretrained(tmp_path / "m")  # config.json alone
    (tmp_path / "weights.safetensors").rename(tmp_path / "m" / "model.safetensors")
    info = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**info, "version": 2}))
    with pytest.raises(ValueError, match="has format version 2; this code reads up to 1"):
        load_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(info))
    # An override that adds weights the folder lacks (the footprint table) is refused, not left at random init.
    with pytest.raises(ValueError, match=r"missing \['footprint_embed\."):
        load_pretrained(tmp_path / "m", model_overrides={"footprint_embed": True})


def test_open_clip_query_tower_round_trips_with_its_tokenizer_and_no_weights_file(tmp_path):
    torch.manual_seed(0)
    cfg = dataclass_to_dict(load_model_cfg("tiny", ["query.source=open_clip"]))
    model, processor = build_model(cfg)
    model.eval()
    named = json.loads(json.dumps(cfg))
    named["vision"]["pretrained"] = str(tmp_path / "vit_elsewhere.pt")  # both replaced by the saved weights
    named["query"]["pretrained"] = str(tmp_path / "text_tower_elsewhere.pt")
    save_pretrained(model, processor, named, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    assert saved["vision"]["pretrained"] is None and saved["query"]["pretrained"] is None
    loaded, proc2 = load_pretrained(tmp_path / "m")
    assert torch.equal(_logits(model, processor), _logits(loaded, proc2))
    assert proc2.encode_queries(["how many?"])[0].shape == (1, 32)  # open_clip's tokenizer, not the LLM's


def test_hf_tower_from_the_hub_is_not_saved(tmp_path):
    model, processor, cfg = _tiny()
    hub = json.loads(json.dumps(cfg))
    hub["vision"].update(backend="hf_clip", pretrained=True, model_name="openai/clip-vit-base-patch32")
    with pytest.raises(ValueError, match=r"vision\.model_name='openai/clip-vit-base-patch32' is loaded from the hub"):
        save_pretrained(model, processor, hub, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("lost,match", [
    ("model.safetensors", r"model\.safetensors missing"),
    ("processor", r"processor/arr_coc_processor\.json, processor/tokenizer_config\.json missing"),
    ("processor/arr_coc_processor.json", r"'[^']*/m': processor/arr_coc_processor\.json missing"),
    ("processor/tokenizer.json", r"processor'\: the processor \(tokenizer\) does not load"),
])
def test_load_names_the_file_a_folder_lacks(tmp_path, lost, match):
    """A folder copied without processor/ (or part of it) failed with a FileNotFoundError or transformers' "Couldn't
    instantiate the backend tokenizer", after building the model, naming neither the folder nor the file."""
    import shutil

    model, processor, cfg = _tiny()
    save_pretrained(model, processor, cfg, tmp_path / "m")
    gone = tmp_path / "m" / lost
    if gone.is_dir():
        shutil.rmtree(gone)
    else:
        gone.unlink()
    with pytest.raises(ValueError, match=match):
        load_pretrained(tmp_path / "m")


@pytest.mark.parametrize("text,match", [
    ('{"format": "arr_coc_pretrained", "version": 1, "mod', r"config\.json' is not valid JSON"),
    ("[1, 2]", r"config\.json' must hold a JSON object, got list"),
    ('{"format": "arr_coc_pretrained", "version": 1.5}', r"config\.json' has format version 1\.5; expected an integer"),
    ('{"format": "arr_coc_pretrained", "version": null}', r"config\.json' has format version None"),
    ('{"format": "arr_coc_pretrained", "version": "x"}', r"config\.json' has format version 'x'"),
    ('{"format": "arr_coc_pretrained", "version": 1}', r"config\.json' holds no model config"),
])
def test_load_refuses_an_unreadable_config_by_name(tmp_path, text, match):
    """A truncated or hand-edited config.json was a bare JSONDecodeError, AttributeError, TypeError or KeyError (or,
    for version 1.5, read as version 1), none naming the file."""
    model, processor, cfg = _tiny()
    save_pretrained(model, processor, cfg, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        load_pretrained(tmp_path / "m")


@pytest.mark.parametrize("damage", ["half", "last_bytes", "zeros", "empty"])
def test_load_refuses_a_truncated_or_corrupt_weights_file_by_name(tmp_path, damage):
    """A weights file cut short by a copy (or overwritten) raised safetensors' own SafetensorError, which is no
    ValueError and names no file ("Error while deserializing header: incomplete metadata...")."""
    model, processor, cfg = _tiny()
    save_pretrained(model, processor, cfg, tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"half": data[: len(data) // 2], "last_bytes": data[:-10], "zeros": bytes(100), "empty": b""}[damage])
    with pytest.raises(ValueError, match=r"m/model\.safetensors' is not a readable safetensors file"):
        load_pretrained(tmp_path / "m")


def test_export_never_deletes_the_run_it_exports(tmp_path, monkeypatch):
    """--out is replaced when it exists: --run ck --out ck (or --out a folder above the checkpoint) deleted the
    training checkpoint being exported and left the export in its place. An exported folder is still re-exported in
    place (to another dtype)."""
    from safetensors.torch import save_file

    from scripts.export_model import main as export

    model, processor, cfg = _tiny()
    ck = tmp_path / "run" / "ck"
    ck.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ck / "model.safetensors"))
    (ck / "trainer_state.json").write_text(json.dumps({"step": 5, "config": {"model_preset": "tiny"}}))
    before = sorted(p.name for p in ck.iterdir())
    monkeypatch.chdir(tmp_path)
    for out in ("run/ck", "run", "."):
        with pytest.raises(ValueError, match=r"holds the checkpoint being exported"):
            export(["--run", "run/ck", "--out", out])
        assert sorted(p.name for p in ck.iterdir()) == before
    export(["--run", "run/ck", "--out", "w"])
    export(["--run", "w", "--out", "w", "--dtype", "float32"])
    assert json.loads((tmp_path / "w" / "config.json").read_text())["dtype"] == "float32"
