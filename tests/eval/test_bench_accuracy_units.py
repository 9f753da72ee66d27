"""Unit tests of the accuracy-vs-budget driver's helpers: the table numbers, run reuse, the probes (no training)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from types import SimpleNamespace

import pytest
import torch


def test_stats_drop_missing_values_and_use_the_sample_std():
    from scripts.bench_accuracy_budget import _fmt, _stats

    m, sd = _stats([0.5, None, float("nan"), 0.7])  # a failed or unanswerable evaluation is not a zero
    assert m == pytest.approx(0.6) and sd == pytest.approx(math.sqrt(0.02))  # n - 1 = 1: sqrt(0.02), not 0.1
    assert _stats([0.3]) == (0.3, 0.0)
    assert all(math.isnan(x) for x in (*_stats([]), *_stats([None, float("nan")])))
    assert _fmt(0.6, math.sqrt(0.02), 2) == "60.0 ± 14.1"
    assert _fmt(0.6, 0.0, 1) == "60.0"  # one seed: no spread to give
    assert _fmt(*_stats([None]), 0) == "n/a"


def _summary(seed, acc, digit, flops, box):
    return {"seed": seed, "accuracy": acc, "by_type": {"digit": {"accuracy": digit}, "shape": {"accuracy": acc}},
            "visual_flops_fraction": flops, "target_fraction": box}


def _meta(**kw):
    meta = {"smoke": False, "seeds": [0, 1], "N": 64, "train_fraction": 0.25, "rows": 8, "command": "cmd",
            "date": "today", "device": "cpu", "heatmap": "rows: arr_coc_projection", "failures": [],
            "training": {}, "parallel": 1, "train_seconds": 0.0, "probe": None, "eval_probe": None, "notes": [],
            "sensitivity": {}, "grounding": None, "onset_accuracy": None, "onset_window": 500}
    return {**meta, **kw}


def _table(lines, heading):
    """The rows of the table under ``heading`` (a line starting with it), separator included."""
    i = next(i for i, x in enumerate(lines) if x.startswith(heading))
    j = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("|"))
    k = next((k for k in range(j, len(lines)) if not lines[k].startswith("|")), len(lines))
    return lines[j:k]


def test_write_md_puts_each_method_fraction_and_seed_in_its_cell(tmp_path):
    from scripts.bench_accuracy_budget import _write_md

    results = {"full": {1.0: [_summary(0, 0.5, 0.4, 1.0, 0.1), _summary(1, 0.7, 0.6, 1.0, 0.3)]},
               "arr_coc_projection": {1.0: [_summary(0, 0.45, 0.0, 1.0, 0.1)],
                                      0.25: [_summary(0, 0.4, 0.3, 0.2, float("nan")),
                                             _summary(1, 0.2, 0.1, 0.3, float("nan"))]},
               "uniform_trained": {1.0: [_summary(0, 0.5, 0.4, 1.0, 0.1)], 0.25: [_summary(0, 0.3, 0.2, 0.25, 0.5)]},
               "uniform": {1.0: [_summary(0, 0.5, 0.4, 1.0, 0.1)]}}
    methods = ["full", "arr_coc_projection", "uniform_trained", "uniform"]
    path = tmp_path / "r.md"
    _write_md(path, results, methods, [1.0, 0.25], _meta())
    lines = path.read_text().split("\n")
    assert _table(lines, "## Accuracy (%)") == [
        "| method | 100% | 25% |", "|---|---|---|",
        "| full | 60.0 ± 14.1 | n/a |",
        "| arr_coc_projection | 45.0 | 30.0 ± 14.1 |",
        "| uniform_trained | 50.0 | 30.0 |",  # one seed: a bare mean
        "| uniform | 50.0 | n/a |"]
    # At 100% only the full model and ARR-COC differ; at 25% a method with no evaluation there has no row.
    assert _table(lines, "## At 100% of the tokens") == [
        "| method | digit | shape | visual FLOPs fraction | tokens in queried box |", "|---|---|---|---|---|",
        "| full | 50.0 ± 14.1 | 60.0 ± 14.1 | 1.000 | 20.0% |",
        "| arr_coc_projection | 0.0 | 45.0 | 1.000 | 10.0% |"]
    assert _table(lines, "## At 25% of the tokens") == [
        "| method | digit | shape | visual FLOPs fraction | tokens in queried box |", "|---|---|---|---|---|",
        "| arr_coc_projection | 20.0 ± 14.1 | 30.0 ± 14.1 | 0.250 | n/a |",
        "| uniform_trained | 20.0 | 30.0 | 0.250 | 50.0% |"]
    assert "![budget heat-map](budget_heatmap.png)" in lines  # drawn unless the meta says otherwise
    _write_md(path, results, methods, [1.0, 0.25], _meta(heatmap_drawn=False))
    assert "budget_heatmap.png" not in path.read_text()


def test_write_md_reports_the_probes_as_measured(tmp_path):
    from scripts.bench_accuracy_budget import _write_md

    sens = {"arr_coc_projection": {"moved": 0.1, "in_box": 0.2, "box_area": 0.3, "patch_share": 0.4,
                                   "patch_area": 0.5, "patch_ceiling": 0.6, "images": 7}}
    meta = _meta(sensitivity=sens, grounding={"layer": 2, "attention": 0.42, "tokens": 0.17, "images": 7},
                 training={"seed0/full": "step 3 of 3"},
                 probe={"steps": 90, "slowest": "full", "seconds_per_step": 0.5, "minutes": 1, "margin": 0.15},
                 eval_probe={"rows": 40, "rows_fit": 41, "evals": 3, "seconds": 30.0, "fixed_seconds": 2.0,
                             "seconds_per_row": 0.005})
    path = tmp_path / "r.md"
    _write_md(path, {}, [], [1.0], meta)
    md = path.read_text()
    assert "| arr_coc_projection | 10.0% | 20.0% | 30.0% | 40.0% | 50.0% | 60.0% |" in md
    assert "7 test images" in md
    assert "layer 2 puts 42.0% of its attention on the visual tokens inside the queried box, which are 17.0%" in md
    assert "fits in 1 minutes less 15%" in md and "| seed0/full | step 3 of 3 |" in md
    assert "Test rows per evaluation chosen by `--total-minutes`: 40 (41 fit; 3 evaluations in 30 s at 2.0 s + 5.0 ms" \
        in md


def test_per_seed_rows_keep_zero_accuracy_and_missing_box_apart():
    from scripts.bench_accuracy_budget import _per_seed_lines

    results = {"full": {1.0: [_summary(0, 0.5, 0.0, 1.0, float("nan"))]}}
    lines = _per_seed_lines(results, ["full"], {"seeds": [0, 1], "train_fraction": 0.25}, ["digit", "shape"])
    assert lines[-2:] == ["|---|---|---|---|---|---|---|---|", "| full | 100% | 0 | 50.0 | 0.0 | 50.0 | n/a | n/a |"]
    # Every model trained at the training budget gets its row there: ARR-COC's and both uniform-pooling ones.
    results.update({m: {0.25: [_summary(1, 0.25, 0.5, 0.0, 0.3)]} for m in
                    ("arr_coc_salient", "uniform_trained", "uniform_continued", "tome")})
    lines = _per_seed_lines(results, ["full", "arr_coc_salient", "uniform_trained", "uniform_continued", "tome"],
                            {"seeds": [0, 1], "train_fraction": 0.25}, ["digit", "shape"])
    assert [x.split(" | ")[0] for x in lines[-4:]] == ["| full", "| arr_coc_salient", "| uniform_trained",
                                                       "| uniform_continued"]


def _checkpoint(run, step, config):
    ckpt = run / "checkpoints" / f"step_{step:08d}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": step, "config": config}))


def test_steps_status_and_completeness_read_the_latest_checkpoint(tmp_path):
    from scripts.bench_accuracy_budget import _is_complete, _steps, _train_status

    none = tmp_path / "none"
    assert _steps(none) == (None, None) and not _is_complete(none) and _train_status(none) == "step None of None"
    early = tmp_path / "early"
    _checkpoint(early, 2, {"train": {"max_steps": 3}})
    assert _steps(early) == (2, 3) and not _is_complete(early)
    assert _train_status(early) == "step 2 of 3 (stopped early by --minutes)"
    done = tmp_path / "done"
    _checkpoint(done, 1, {"train": {"max_steps": 1}})
    _checkpoint(done, 3, {"train": {"max_steps": 3}})
    assert _steps(done) == (3, 3) and _is_complete(done) and _train_status(done) == "step 3 of 3"
    open_ended = tmp_path / "open"
    _checkpoint(open_ended, 5, {"train": {}})
    assert _is_complete(open_ended) and _train_status(open_ended) == "step 5 of None"


def test_reusable_only_for_the_same_run_at_the_requested_steps(tmp_path):
    from models.builders import dataclass_to_dict
    from scripts.bench_accuracy_budget import _reusable
    from training.train import load_train_cfg

    run = tmp_path / "run"
    base = [f"output_dir={run}", "train.seed=0"]
    assert not _reusable(run, ["--config", "configs/train/tiny.yaml", *base, "train.max_steps=3"])  # no checkpoint
    _checkpoint(run, 3, dataclass_to_dict(load_train_cfg("configs/train/tiny.yaml", [*base, "train.max_steps=3"])))

    def reusable(*over):
        return _reusable(run, ["--config", "configs/train/tiny.yaml", *base, *over])

    assert reusable("train.max_steps=3")
    assert not reusable("train.max_steps=4")  # --steps grew: resumed, not reused
    with pytest.raises(ValueError, match="step 3, past the requested train.max_steps=2"):
        reusable("train.max_steps=2")
    with pytest.raises(ValueError, match="train.seed"):
        _reusable(run, ["--config", "configs/train/tiny.yaml", f"output_dir={run}", "train.seed=1",
                        "train.max_steps=3"])


def test_kv_flattens_nested_overrides_but_not_allocator_kwargs():
    from scripts.bench_accuracy_budget import _kv

    assert _kv("model", {"arr_coc": {"budget": 16, "allocator": "bandit", "allocator_kwargs": {"levels": [1, 2]},
                                     "extra": {}}, "llm": {"text_config": {"num_hidden_layers": 3}}}) == [
        "model.arr_coc.budget=16", 'model.arr_coc.allocator="bandit"',
        'model.arr_coc.allocator_kwargs={"levels": [1, 2]}', "model.arr_coc.extra={}",
        "model.llm.text_config.num_hidden_layers=3"]


def test_child_threads_ceiling_is_never_oversubscribed():
    from scripts.bench_accuracy_budget import _child_threads

    assert _child_threads(2, {}, cpus=3) == {"OMP_NUM_THREADS": "1"}  # 2 x 2 threads would be 4 on 3 CPUs
    assert _child_threads(2, {"OMP_NUM_THREADS": ""}, cpus=4) == {"OMP_NUM_THREADS": "2"}  # empty: not a choice


def test_geometry_gives_the_bandit_the_context_width_the_model_feeds_it():
    from models.builders import build_model
    from scripts.bench_accuracy_budget import SMOKE_MODEL, _geometry, _kv
    from training.train import load_train_cfg, model_cfg

    a = argparse.Namespace(train_config="configs/train/tiny.yaml", train_override=_kv("model", SMOKE_MODEL))
    assert _geometry(a, {}) == _geometry(argparse.Namespace(train_config=a.train_config, train_override=[]),
                                         SMOKE_MODEL)  # --train-override reaches the model measured here
    geo = _geometry(a, {})
    assert (geo["N"], geo["K"], geo["cells"]) == (64, 4, 16)
    over = json.loads(json.dumps(SMOKE_MODEL))
    over["arr_coc"].update(allocator="bandit", budget=16, allocator_kwargs={"context_dim": geo["ctx"],
                                                                       "levels": [1, 2, 4, 8, 16]})
    model, _ = build_model(model_cfg(load_train_cfg("configs/train/tiny.yaml", _kv("model", over))))
    arr = model.arr_coc
    (h, w) = model.vision.fine_grid
    torch.manual_seed(0)
    out = arr(torch.randn(2, 4, h, w, arr.dim), query=torch.randn(2, arr.query_dim))  # a wrong width raises here
    assert out.context.shape == (2, 4, geo["ctx"])


def _fake_reasked(questions):
    from PIL import Image

    def reasked(ds, bcfg, n_images, seed=0):
        yield Image.new("RGB", (8, 8)), questions, "q0"

    return reasked


def _processor(images, texts):
    q = len(texts)
    ids = torch.tensor([[0, 9, 9, 9, 9, 1]] * q)
    return {"pixel_values": torch.zeros(q, 3, 8, 8), "input_ids": ids, "attention_mask": torch.ones_like(ids),
            "query_input_ids": ids, "query_attention_mask": torch.ones_like(ids)}


def test_query_sensitivity_measures_each_question_against_its_own_box(monkeypatch):
    import scripts.bench_accuracy_budget as bench

    # An 8x8 image of 2x2 patches (4x4 px each, row-major). Question 1 asks about the top-left patch, question 2
    # about a 4x6 box over the right column (patches 1 and 3).
    qs = [SimpleNamespace(question="a", target_box=[0, 0, 4, 4]),
          SimpleNamespace(question="b", target_box=[4, 2, 8, 8])]
    monkeypatch.setattr(bench, "_reasked", _fake_reasked(qs))
    budgets = torch.tensor([[4, 2, 1, 1], [1, 1, 2, 4]])  # T = 8 each
    pos1 = torch.tensor([[0.1, 0.1]] * 4 + [[0.9, 0.9]] * 4)  # half of question 1's tokens in its box
    pos2 = torch.tensor([[0.9, 0.9]] * 2 + [[0.1, 0.1]] * 6)  # a quarter of question 2's in its box
    method = SimpleNamespace(embed=lambda *args, **kw: (None, [pos1, pos2], budgets))
    got = bench.query_sensitivity(method, _processor, None, None, (2, 2), max_tokens=6)
    assert got["images"] == 1
    assert got["moved"] == pytest.approx(8 / 16)  # |b1 - b2|_1 = 8 of 2T = 16
    assert got["in_box"] == pytest.approx((0.5 + 0.25) / 2)
    assert got["box_area"] == pytest.approx((16 / 64 + 24 / 64) / 2)
    assert got["patch_share"] == pytest.approx((4 / 8 + 5 / 8) / 2)
    assert got["patch_area"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert got["patch_ceiling"] == pytest.approx((6 / 8 + 1.0) / 2)  # 2 patches of 6 could hold 12 > T
    assert math.isnan(bench.query_sensitivity(method, _processor, None, None, (2, 2))["patch_ceiling"])


def test_attention_grounding_reads_the_named_layer_at_the_last_position(monkeypatch):
    import models.relevance
    import scripts.bench_accuracy_budget as bench

    qs = [SimpleNamespace(question="a", target_box=[0, 0, 4, 4])]
    monkeypatch.setattr(bench, "_reasked", _fake_reasked(qs))
    read = {}

    @contextlib.contextmanager
    def fake_read_attention(layer, last, mask):
        read.update(layer=layer, last=last.tolist())
        yield {"attention": torch.tensor([[0.1, 0.3, 0.1, 0.05, 0.05, 0.4]])}

    monkeypatch.setattr(models.relevance, "read_attention", fake_read_attention)
    layers = ["layer1", "layer2", "layer3"]
    # 4 visual tokens (the id 9 positions) out of 5 slots, one masked off; tokens 1 and 2 lie in the box.
    positions = torch.tensor([[[0.1, 0.1], [0.0, 0.0], [0.2, 0.3], [0.9, 0.9], [0.6, 0.1]]])
    out = SimpleNamespace(positions=positions, mask=torch.tensor([[True, False, True, True, True]]))
    model = SimpleNamespace(embed_inputs=lambda *args, **kw: (None, out), image_token_id=9,
                            language_model=SimpleNamespace(layers=layers), llava=lambda **kw: None)
    got = bench.attention_grounding(model, _processor, None, None, layer=2)
    assert read == {"layer": "layer2", "last": [5]}  # 1-based layer; the prompt's last position
    assert got["attention"] == pytest.approx(0.4 / 0.5) and got["tokens"] == pytest.approx(0.5)
    assert got["layer"] == 2 and got["images"] == 1


def test_probe_steps_fit_the_slowest_base_model_in_the_minutes(tmp_path, monkeypatch):
    import scripts.bench_accuracy_budget as bench

    seen = {}

    class FakeTrainer:
        def __init__(self, a, work):
            seen.update(a=a, work=work)

        def wait(self):
            seen["waited"] = True

    def run(name, samples_per_s):
        d = tmp_path / name
        d.mkdir(parents=True)
        (d / "log.csv").write_text("step,samples_per_s\n" + "".join(f"{i},{s}\n" for i, s in enumerate(samples_per_s)))
        return d

    def seed_runs(seed, full, proj):
        return {"full": run(f"{seed}/full", full),
                "arr": {"arr_coc_projection": run(f"{seed}/arr_coc_projection", proj),
                        "arr_coc_finetuned": run(f"{seed}/arr_coc_finetuned", [1, 1])},  # its own step count: ignored
                "uni": {}, "more": {}}

    # Seed 3: full 8 / 16 = 0.5 s per step at the last row, projection 0.25 s (2 s at its start-up row); seed 4 (the
    # probe trains every seed at once, as the real run does): full 0.4 s, projection 8 / 10 = 0.8 s, the slowest.
    by_seed = {3: seed_runs(3, [100, 16], [4, 32]), 4: seed_runs(4, [100, 20], [100, 10])}
    monkeypatch.setattr(bench, "_Trainer", FakeTrainer)
    monkeypatch.setattr(bench, "_trainer_state", lambda r: {"config": {"train": {"batch_size": 8}}})
    a = argparse.Namespace(steps="auto", minutes=1.0, probe_steps=6, finetune_fractions=[0.25], finetune_steps=50,
                           bandit_after_steps=None, saliency_after_steps=40, train_override=["x=1"], seeds=[3, 4])
    got = bench._probe_steps(a, tmp_path, lambda trainer, seed: by_seed[seed])
    assert got["slowest"] == "arr_coc_projection" and got["seconds_per_step"] == pytest.approx(0.8)
    assert got["steps"] == int(0.85 * 60 / 0.8) == 63
    assert got["seconds_per_step_by_run"] == pytest.approx({"full": 0.5, "arr_coc_projection": 0.8})
    assert got["dependent_seconds_per_step"] == pytest.approx({"arr_coc_finetuned": 8.0})  # kept for the plan check
    pa = seen["a"]
    assert seen["waited"] and seen["work"] == tmp_path / "probe"
    assert (pa.steps, pa.minutes, pa.finetune_steps, pa.bandit_after_steps, pa.saliency_after_steps) == (6, None, 6,
                                                                                                       None, 6)
    assert pa.train_override == ["x=1", "train.log_every=2", "train.save_every=null"] and a.steps == "auto"


def test_eval_rows_fit_the_time_and_the_cap(tmp_path, monkeypatch):
    import scripts.bench_accuracy_budget as bench

    clock = [0.0]

    def fake_eval(run, method, frac, a, out, extra, cache):
        clock[0] += 2.0 + 0.01 * a.eval_samples  # 2 s start-up + 10 ms per row
        return {"n": a.eval_samples}

    monkeypatch.setattr(bench, "_eval", fake_eval)
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def fit(cap, seconds):
        a = argparse.Namespace(eval_samples=cap)
        return bench._eval_rows_that_fit(tmp_path / "full", a, tmp_path, [], {}, n_evals=2, seconds=seconds)

    got = fit(None, 100.0)
    assert got["seconds_per_row"] == pytest.approx(0.01) and got["fixed_seconds"] == pytest.approx(2.0)
    assert got["rows_fit"] == got["rows"] == 4800  # (50 - 2) / 0.01
    assert fit(100, 100.0)["rows"] == 100  # --eval-samples caps the rows
    assert fit(3, 4.11)["rows"] == 3  # 5 rows fit: the cap, not the time, limits them
    with pytest.raises(ValueError, match="that is 5 rows each"):
        fit(None, 4.11)


@pytest.mark.parametrize("argv, match", [
    (["--fractions", "0"], r"--fractions must lie in \(0, 1\], got 0"),
    (["--probe-steps", "1"], "--probe-steps must be >= 2, got 1"),
    (["--minutes", "5", "--total-minutes", "5"], r"--minutes \(5\) must be below --total-minutes \(5\)"),
    (["--total-minutes", "inf"], "--total-minutes must be a finite number > 0, got inf"),
    (["--reserve-seconds", "-1"], "--reserve-seconds must be a finite number >= 0, got -1"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--minutes", "0"], "--minutes must be > 0, got 0"),
    (["--fractions", "0.5", "0.25", "--uniform-fractions", "1"], "--uniform-fractions must be fractions below 1"),
    (["--fractions", "0.5", "--uniform-fractions", "0.25"], "--uniform-fractions must be fractions below 1"),
    (["--finetune-lr", "0"], "--finetune-lr must be a finite number > 0, got 0"),
    (["--saliency-after-steps", "0"], "--saliency-after-steps must be >= 1, got 0"),
    (["--saliency-weight", "0"], "--saliency-weight must be a finite number > 0, got 0.0"),
    (["--saliency-weight", "nan"], "--saliency-weight must be a finite number > 0, got nan"),
])
def test_parse_rejects_bad_values_by_name(argv, match):
    from scripts.bench_accuracy_budget import _parse

    with pytest.raises(ValueError, match=match):
        _parse(argv)


def test_parse_accepts_the_edges_of_each_range():
    from scripts.bench_accuracy_budget import _parse

    a = _parse(["--onset-accuracy", "0", "--reserve-seconds", "0", "--probe-steps", "2", "--steps", "1",
                "--minutes", "4", "--total-minutes", "5", "--fractions", "1", "0.5", "--uniform-fractions", "0.5"])
    assert (a.onset_accuracy, a.reserve_seconds, a.probe_steps, a.steps) == (0.0, 0.0, 2, 1)
    assert a.uniform_fractions == [0.5]


def test_trained_models_in_table_order_and_the_finetune_base():
    from scripts.bench_accuracy_budget import ARR_MODELS, FINETUNE_BASE, _parse

    a = _parse(["--relevance-weight", "0.5", "--grounding-weight", "1", "--budget-fractions", "0.25", "1",
                "--finetune-fractions", "0.25", "1", "--finetune-steps", "3", "--bandit-after-steps", "2",
                "--saliency-after-steps", "2"])
    assert ARR_MODELS(a) == ["arr_coc_projection", "arr_coc_bandit", "arr_coc_relevance", "arr_coc_grounded",
                             "arr_coc_multibudget", "arr_coc_finetuned", "arr_coc_bandit_grounded", "arr_coc_salient"]
    assert (a.saliency_from, a.saliency_weight) == ("uniform", 1.0)
    assert FINETUNE_BASE(a) == "arr_coc_grounded"
    plain = _parse(["--models", "arr_coc_projection", "--finetune-fractions", "0.5", "--finetune-steps", "3"])
    assert plain.grounding_weight == 0 and FINETUNE_BASE(plain) == "arr_coc_projection"
    assert ARR_MODELS(plain) == ["arr_coc_projection", "arr_coc_finetuned"]  # a weight of 0 trains no variant


def test_run_dirs_cover_every_run_of_a_seed(tmp_path):
    from scripts.bench_accuracy_budget import _run_dirs

    runs = {"full": tmp_path / "full", "arr": {"arr_coc_projection": tmp_path / "p"}, "uni": {0.25: tmp_path / "u"},
            "more": {}}
    assert _run_dirs(runs) == [tmp_path / "full", tmp_path / "p", tmp_path / "u"]
    runs["more"] = {"uniform_continued": tmp_path / "c"}  # --saliency-after-steps' control
    assert _run_dirs(runs) == [tmp_path / "full", tmp_path / "p", tmp_path / "u", tmp_path / "c"]


def test_bench_cfg_reads_the_manifest_and_falls_back_on_bad_parameters(monkeypatch):
    import training.data
    from scripts.bench_accuracy_budget import _bench_cfg
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg

    manifests = {"good": {"generator": TINY_GENERATOR}, "bad": {"generator": {"image_size": -1}}}
    monkeypatch.setattr(training.data, "read_manifest", lambda path: manifests[path])
    assert _bench_cfg("good") == BenchmarkCfg.from_dict(TINY_GENERATOR) != BenchmarkCfg()
    assert _bench_cfg("bad") == BenchmarkCfg() and _bench_cfg(None) == BenchmarkCfg()


def test_one_token_and_uniform_trained_fractions_at_the_patch_count():
    # N = 144 tokens, K = 16 patches: 1/9 gives T = 16 = K (one token per patch), 0.05 gives T = 7 < K (infeasible
    # for a per-patch allocation), 1.0 is the full model.
    from scripts.bench_accuracy_budget import _one_token_fractions, _uniform_trained_fractions

    fr = [1.0, 0.5, 0.25, 0.125, 1 / 9, 0.05]
    assert _one_token_fractions(fr, 144, 16) == [1 / 9]
    assert _uniform_trained_fractions(fr, None, 144, 16) == [0.5, 0.25, 0.125, 1 / 9]
    assert _uniform_trained_fractions(fr, [0.25, 1 / 9], 144, 16) == [0.25, 1 / 9]
    assert _uniform_trained_fractions(fr, [0.05], 144, 16) == []


def test_training_plan_check_refuses_before_training_what_cannot_end_in_time():
    import scripts.bench_accuracy_budget as bench

    a = argparse.Namespace(minutes=3.0, finetune_steps=2000, bandit_after_steps=1000, saliency_after_steps=None)
    probe = {"steps": 1400, "seconds_per_step": 0.1,  # base: 140 s
             "dependent_seconds_per_step": {"arr_coc_finetuned": 0.05, "arr_coc_bandit_grounded": 0.15,
                                            "arr_coc_salient": 9.0}}  # salient: no steps asked, not counted
    # fine-tune 100 s, bandit 150 s: the longest run after the base models is the bandit, 140 + 150 = 290 s
    assert bench._check_training_fits(a, probe, left=290.0) == pytest.approx(290.0)
    with pytest.raises(ValueError, match=r"base models need 140 s \(1400 steps at 0\.100 s/step\), then "
                                         r"arr_coc_bandit_grounded 150 s \(1000 steps\), 290 s in all, but 289 s"):
        bench._check_training_fits(a, probe, left=289.0)
    # each run is capped by --minutes: a 2000-step bandit at 0.15 s/step stops at 180 s
    a.bandit_after_steps = 2000
    assert bench._check_training_fits(a, probe, left=1e9) == pytest.approx(140.0 + 180.0)
    # no runs after the base models: the base models alone
    assert bench._check_training_fits(a, {"steps": 10, "seconds_per_step": 1.0}, left=10.0) == pytest.approx(10.0)
    with pytest.raises(ValueError, match=r"need 10 s \(10 steps at 1\.000 s/step\), 10 s in all, but 9 s"):
        bench._check_training_fits(a, {"steps": 10, "seconds_per_step": 1.0}, left=9.0)
