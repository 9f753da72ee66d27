"""``eval.run_eval``: config checks, batched evaluation, resume from a torn JSONL, checkpoints, FLOPs accounting."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from eval.flops import layer_dims, visual_flops, visual_flops_fraction
from eval.run_eval import load_eval_cfg, main, summarize, target_fraction
from models.builders import build_model

CONFIGS = sorted(Path("configs/eval").glob("*.yaml"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark

    path = tmp_path_factory.mktemp("bench") / "mini"
    make_benchmark(path, seed=0, sizes={"train": 8, "val": 7}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    return path


def _args(out, bench, *extra):
    return ["--config", "configs/eval/tiny.yaml", f"output_dir={out}", f"data.path={bench}", "data.generate=false",
            "data.max_samples=null", "batch_size=3", *extra]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_eval_configs_load_and_are_headed_by_their_command(path):
    assert path.read_text().splitlines()[0].startswith("#")
    assert "python -m eval.run_eval --config " + str(path) in path.read_text()
    cfg = load_eval_cfg(path)
    assert cfg.output_dir


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="nope"):
        load_eval_cfg("configs/eval/tiny.yaml", ["nope=1"])
    with pytest.raises(ValueError, match="budgett"):
        load_eval_cfg("configs/eval/tiny.yaml", ["model.arr_coc.budgett=3"])
    with pytest.raises(ValueError, match="'bogus'"):
        load_eval_cfg("configs/eval/tiny.yaml", ["method=bogus"])
    with pytest.raises(ValueError, match="needs token_fraction"):
        load_eval_cfg("configs/eval/tiny.yaml", ["method=tome"])
    with pytest.raises(ValueError, match="2.0"):
        load_eval_cfg("configs/eval/tiny.yaml", ["token_fraction=2.0"])
    with pytest.raises(ValueError, match="'f1'"):
        load_eval_cfg("configs/eval/tiny.yaml", ["metric=f1"])
    with pytest.raises(ValueError, match="token_fraction.*True"):
        load_eval_cfg("configs/eval/tiny.yaml", ["token_fraction=true"])
    with pytest.raises(ValueError, match="max_samples.*-3"):
        load_eval_cfg("configs/eval/tiny.yaml", ["data.max_samples=-3"])
    with pytest.raises(ValueError, match="max_samples.*0"):
        load_eval_cfg("configs/eval/tiny.yaml", ["data.max_samples=0"])
    with pytest.raises(ValueError, match="resume.*maybe"):
        load_eval_cfg("configs/eval/tiny.yaml", ["resume=maybe"])
    with pytest.raises(ValueError, match="predict_only.*'yes please'"):
        load_eval_cfg("configs/eval/tiny.yaml", ["predict_only=yes please"])


def test_evaluate_then_resume_from_a_torn_jsonl(bench, tmp_path):
    out = tmp_path / "ev"
    summary = main(_args(out, bench))
    recs = _records(out / "predictions.jsonl")
    assert summary["n"] == len(recs) == 7 and summary["evaluated_now"] == 7
    assert len({r["question_id"] for r in recs}) == 7
    keys = {"question_id", "question", "prediction", "answers", "question_type", "score", "tokens", "target_fraction",
            "latency_s"}
    assert keys <= set(recs[0])
    assert all(r["tokens"] == 32 for r in recs)  # the tiny preset's trained budget
    assert all(r["score"] in (0.0, 1.0) for r in recs)  # exact match on the benchmark
    assert summary["accuracy"] == pytest.approx(sum(r["score"] for r in recs) / 7)
    assert set(summary["by_type"]) == {r["question_type"] for r in recs}
    assert sum(v["n"] for v in summary["by_type"].values()) == 7
    assert summary["mean_visual_tokens"] == 32
    assert 0 < summary["visual_flops_fraction"] < 0.5  # 32 of 64 tokens, attention below linear
    boxed = [r for r in recs if r["target_fraction"] is not None]
    assert boxed and all(0 <= r["target_fraction"] <= 1 for r in boxed)
    assert json.loads((out / "summary.json").read_text())["n"] == 7

    # Simulate a kill: keep two complete records and half of the third.
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(lines[:2]) + lines[2][:25])
    again = main(_args(out, bench))
    assert again["resumed"] == 2 and again["evaluated_now"] == 5
    redo = _records(out / "predictions.jsonl")
    assert [r["question_id"] for r in redo] == [r["question_id"] for r in recs]
    # Same weights (seeded) and greedy decoding: the redone questions get the same answers and token counts.
    strip = lambda r: {k: v for k, v in r.items() if k != "latency_s"}  # noqa: E731
    assert [strip(r) for r in redo] == [strip(r) for r in recs]
    # Nothing left to do: a third run evaluates nothing.
    assert main(_args(out, bench))["evaluated_now"] == 0
    # Another model, batch size or device in the same folder is refused, not mixed into one summary.
    with pytest.raises(ValueError, match="architecture"):
        main(_args(out, bench, "model.llm.text_config.num_hidden_layers=3"))
    with pytest.raises(ValueError, match="batch_size"):
        main(_args(out, bench, "batch_size=2"))
    run = json.loads((out / "run.json").read_text())
    assert run["device"] == "cpu" and run["batch_size"] == 3 and run["model_overrides"] == {}
    # A folder from before these were recorded still resumes (nothing to compare them with).
    legacy = {k: v for k, v in run.items() if k not in ("architecture", "device", "batch_size", "model_overrides")}
    (out / "run.json").write_text(json.dumps(legacy))
    assert main(_args(out, bench))["evaluated_now"] == 0

    # Other settings in the same folder are refused; resume=false starts over.
    with pytest.raises(ValueError, match="different settings"):
        main(_args(out, bench, "method=uniform", "token_fraction=0.25"))
    fresh = main(_args(out, bench, "method=uniform", "token_fraction=0.25", "resume=false"))
    assert fresh["evaluated_now"] == 7 and fresh["mean_visual_tokens"] == 16


def test_resume_ignores_the_order_of_overrides(bench, tmp_path):
    out = tmp_path / "ord"
    first = main(_args(out, bench, "model.arr_coc.budget=32", "model.arr_coc.max_tokens=6", "data.max_samples=3"))
    assert first["evaluated_now"] == 3
    again = main(_args(out, bench, "model.arr_coc.max_tokens=6", "model.arr_coc.budget=32", "data.max_samples=3"))
    assert again["evaluated_now"] == 0 and again["resumed"] == 3


def test_fastv_run_reports_its_flops(bench, tmp_path):
    # A 3-layer LLM so that FastV (K = 2) has a layer to prune.
    s = main(_args(tmp_path / "fv", bench, "method=fastv", "token_fraction=0.25",
                   "model.llm.text_config.num_hidden_layers=3", "data.max_samples=3"))
    assert s["n"] == 3 and s["mean_visual_tokens"] == 16
    u = main(_args(tmp_path / "un", bench, "method=uniform", "token_fraction=0.25",
                   "model.llm.text_config.num_hidden_layers=3", "data.max_samples=3"))
    # FastV's first two layers see all 64 tokens, so it costs more than pooling to 16 in every layer.
    assert s["visual_flops_fraction"] > u["visual_flops_fraction"] > 0


def test_checkpoint_from_the_training_recipe(bench, tmp_path):
    from training.train import main as train_main

    run = tmp_path / "run"
    train_main(["--config", "configs/train/tiny.yaml", f"output_dir={run}", f"data.path={bench}",
                "data.generate=false", "dist.fsdp=off", "train.max_steps=1", "train.batch_size=4"])
    s = main(_args(tmp_path / "ck", bench, f"checkpoint={run}", "data.max_samples=3"))
    assert s["n"] == 3
    assert s["model"]["checkpoint"].endswith("step_00000001") and s["model"]["step"] == 1
    with pytest.raises(ValueError, match="no model.safetensors"):
        main(_args(tmp_path / "ck2", bench, f"checkpoint={tmp_path / 'nothing'}"))

    # The same weights exported (float32) evaluate to the same predictions from the exported folder.
    from scripts.export_model import main as export_main

    export_main(["--run", str(run), "--out", str(tmp_path / "export"), "--dtype", "float32"])
    e = main(_args(tmp_path / "ex", bench, f"checkpoint={tmp_path / 'export'}", "data.max_samples=3"))
    assert e["model"]["step"] == 1 and e["model"]["checkpoint"] == str((tmp_path / "export").resolve())
    preds = [[r["prediction"] for r in _records(d / "predictions.jsonl")] for d in (tmp_path / "ck", tmp_path / "ex")]
    assert preds[0] == preds[1] and e["accuracy"] == s["accuracy"]


def test_target_fraction_and_summary():
    pos = torch.tensor([[0.1, 0.1], [0.1, 0.6], [0.9, 0.9], [0.55, 0.55]])  # (row, col)
    # Box x in [40, 80), y in [0, 50) of a 100 x 100 image holds the 2nd token only; x,y in [50, 100) the last two.
    assert target_fraction(pos, [40, 0, 80, 50], (100, 100)) == pytest.approx(0.25)
    assert target_fraction(pos, [50, 50, 100, 100], (100, 100)) == pytest.approx(0.5)
    assert target_fraction(pos, [], (100, 100)) is None
    s = summarize([{"score": 1.0, "question_type": "a", "tokens": 4, "latency_s": 0.1},
                   {"score": 0.0, "question_type": "b", "tokens": 6, "latency_s": 0.3}])
    assert s["accuracy"] == 0.5 and s["by_type"]["a"]["accuracy"] == 1.0 and s["mean_visual_tokens"] == 5


def test_flops_fraction_definition():
    torch.manual_seed(0)
    model, _ = build_model("tiny")
    tc = model.config.text_config
    assert visual_flops_fraction(tc, 64, 64, n_before=5, n_after=20) == pytest.approx(1.0)
    quarter = visual_flops_fraction(tc, 16, 64, n_before=5, n_after=20)
    assert 0.2 < quarter < 0.25  # attention is super-linear in the token count
    assert visual_flops_fraction(tc, [64, 16], 64, n_before=5) > quarter
    # Linear part by hand for one visual token, no text: 2·(d·q + 2·d·kv + q·d) + 6·d·ffn, plus its self pair.
    d, q, kv, ffn = 32, 32, 16, 64
    per_layer = 2 * (d * q + 2 * d * kv + q * d) + 6 * d * ffn + 4 * q
    assert visual_flops(tc, 1) == pytest.approx(2 * per_layer)
    with pytest.raises(ValueError, match="3 entries"):
        visual_flops(tc, [1, 2, 3])


def test_flops_by_hand_on_a_config_with_distinct_widths():
    # hidden 8, q = 2 heads x head_dim 3 = 6 (head_dim set explicitly, not hidden // heads), kv = 1 x 3, ffn 20.
    tc = SimpleNamespace(hidden_size=8, num_attention_heads=2, head_dim=3, num_key_value_heads=1,
                         intermediate_size=20, num_hidden_layers=2)
    assert layer_dims(tc) == {"hidden": 8, "q": 6, "kv": 3, "ffn": 20, "layers": 2}
    # Per visual token: 2·(8·6 + 2·8·3 + 6·8) + 6·8·20 = 288 + 960 = 1248.
    # [2 text][3 image][4 text]: pairs 3·2 + 3·4/2 + 4·3 = 24, attention 4·6·24 = 576; a layer 3·1248 + 576.
    layer = 3 * 1248 + 576
    assert visual_flops(tc, 3, n_before=2, n_after=4) == 2 * layer
    assert visual_flops(tc, [3, 0], n_before=2, n_after=4) == layer  # a layer without visual tokens costs nothing
    # Full model, 6 tokens: 6·1248 + 4·6·(6·2 + 21 + 4·6).
    full = 2 * (6 * 1248 + 4 * 6 * (12 + 21 + 24))
    assert visual_flops_fraction(tc, 3, 6, n_before=2, n_after=4) == pytest.approx(2 * layer / full)
    # Without head_dim / num_key_value_heads: head_dim = hidden // heads and kv = q.
    plain = SimpleNamespace(hidden_size=8, num_attention_heads=2, intermediate_size=20, num_hidden_layers=1)
    assert layer_dims(plain) == {"hidden": 8, "q": 8, "kv": 8, "ffn": 20, "layers": 1}
    with pytest.raises(ValueError, match="n_before=-1"):
        visual_flops(tc, 3, n_before=-1)
    with pytest.raises(ValueError, match="n_after=-2"):
        visual_flops(tc, 3, n_after=-2)
    with pytest.raises(ValueError, match="full_tokens"):
        visual_flops_fraction(tc, 0, 0)
    import numpy as np
    assert visual_flops(tc, np.int64(3), n_before=2, n_after=4) == 2 * layer  # was a TypeError from list()
    assert visual_flops(tc, torch.tensor([3, 0]), n_before=2, n_after=4) == layer
    with pytest.raises(ValueError, match="visual_per_layer must be an integer.*2.5"):
        visual_flops(tc, 2.5)


def test_flops_refuses_non_integer_counts():
    # q = kv = 8 (head_dim 8 // 2 = 4). Per visual token 2·(8·8 + 2·8·8 + 8·8) + 6·8·20 = 512 + 960 = 1472 FLOPs;
    # [1 text][2 image]: pairs 2·1 + 2·3/2 = 5, attention 4·8·5 = 160; one layer 2·1472 + 160 = 3104.
    # int() truncated a per-layer count of 2.9 to 2 (giving 3104 instead of an error), read "2" as 2 and True as 1;
    # fractional text counts gave fractional pair counts.
    tc = SimpleNamespace(hidden_size=8, num_attention_heads=2, intermediate_size=20, num_hidden_layers=1)
    assert visual_flops(tc, [2], n_before=1) == 3104
    for bad in ([2.9], ["2"], [True], [torch.tensor(2.0)]):
        msg = f"visual_per_layer entries must be an integer, got {bad[0]!r}"
        with pytest.raises(ValueError, match=re.escape(msg)):
            visual_flops(tc, bad, n_before=1)
    with pytest.raises(ValueError, match="visual_per_layer must be an integer.*True"):
        visual_flops(tc, True)
    with pytest.raises(ValueError, match="n_before must be an integer, got 1.5"):
        visual_flops(tc, 2, n_before=1.5)
    with pytest.raises(ValueError, match="n_after must be an integer, got '3'"):
        visual_flops(tc, 2, n_after="3")
    for bad in (10.5, "10", True):  # 10.5 was reported as a bad visual_per_layer, "10" raised a TypeError
        with pytest.raises(ValueError, match=f"full_tokens must be an integer, got {bad!r}"):
            visual_flops_fraction(tc, 2, bad)
    assert visual_flops(tc, [torch.tensor(2)], n_before=torch.tensor(1)) == 3104  # 0-d integer tensors still pass


def test_loader_workers_give_the_same_predictions(bench, tmp_path):
    # Rows decoded in 2 DataLoader worker processes, in order, give exactly the single-process records.
    a = main(_args(tmp_path / "w0", bench, "num_workers=0"))
    b = main(_args(tmp_path / "w2", bench, "num_workers=2"))
    ra, rb = _records(tmp_path / "w0" / "predictions.jsonl"), _records(tmp_path / "w2" / "predictions.jsonl")
    drop = ("latency_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in ra] == \
           [{k: v for k, v in r.items() if k not in drop} for r in rb]
    assert a["accuracy"] == b["accuracy"] and a["n"] == b["n"] == 7


def test_max_new_tokens_too_short_for_the_answers_is_refused(bench, tmp_path):
    # Colour answers such as " yellow" are 7 byte tokens: 4 new tokens would cap accuracy silently ("yel").
    from eval.run_eval import _check_answer_length

    _, processor = build_model("tiny")
    answers = [["red"] * 10, ["yellow"] * 10, ["7"] * 10, ["yellow"] * 9 + ["no"]]
    with pytest.raises(ValueError, match=r"max_new_tokens=4 is too short for 2 of 4 questions.*'yellow', 7 tokens"):
        _check_answer_length(answers, processor, 4)
    _check_answer_length(answers, processor, 7)  # exactly the answer's length: no EOS needed
    with pytest.raises(ValueError, match="set max_new_tokens=7 or more"):
        _check_answer_length(answers, processor, 6)
    # A minority answer that is too long does not matter: the consensus answer is what the model is trained on.
    _check_answer_length([["no"] * 9 + ["yellow"]], processor, 3)
    with pytest.raises(ValueError, match="max_new_tokens=2"):
        main(_args(tmp_path / "ev", bench, "max_new_tokens=2", "data.generate_cfg.question_types=[\"colour\"]"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_eval_configs_leave_room_for_every_benchmark_answer(path):
    # The benchmark's longest answers are the 6-letter colours; every config must be able to produce them.
    from eval.run_eval import _check_answer_length
    from training.benchmark import DEFAULT_COLOURS

    cfg = load_eval_cfg(path, [])
    _, processor = build_model(cfg.model_preset)
    _check_answer_length([[c] for c in DEFAULT_COLOURS], processor, cfg.max_new_tokens)


@pytest.mark.parametrize("source,unlabelled", [("docvqa", None), ("textvqa", [""] * 10)],
                         ids=["answers-null", "answers-blank"])
def test_unlabelled_test_split_is_refused_by_name(tmp_path, source, unlabelled):
    # Public test splits carry no answers: null in lmms-lab's DocVQA test split, ten empty strings in TextVQA's. They
    # failed with a training message ("a training row needs at least one answer") or were scored against "".
    import datasets
    from PIL import Image

    text = datasets.Value("string")
    qid, extra = ("questionId", {"question_types": datasets.List(text)}) if source == "docvqa" else ("question_id", {})
    feats = datasets.Features({qid: text, "question": text, "image": datasets.Image(), "answers": datasets.List(text),
                               **extra})
    rows = {qid: ["q1", "q2"], "question": ["what is written?"] * 2, "image": [Image.new("L", (40, 60), 200)] * 2,
            **{k: [None] * 2 for k in extra}}
    splits = {"validation": datasets.Dataset.from_dict({**rows, "answers": [["abc"] * 10] * 2}, features=feats),
              "test": datasets.Dataset.from_dict({**rows, "answers": [unlabelled] * 2}, features=feats)}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "d"))
    args = ["--config", "configs/eval/tiny.yaml", f"data.source={source}", f"data.path={tmp_path / 'd'}",
            "data.generate=false", "data.max_samples=null", "batch_size=2"]
    with pytest.raises(ValueError, match=r"data.split='test' of data.source='%s': 2 of 2 questions have no "
                                         r"reference answer \(e.g. question_id 'q1'\)" % source):
        main([*args, f"output_dir={tmp_path / 'test'}", "data.split=test"])
    assert main([*args, f"output_dir={tmp_path / 'val'}", "data.split=validation"])["n"] == 2
    # predict_only: predictions for the test server, no scores.
    summary = main([*args, f"output_dir={tmp_path / 'test'}", "data.split=test", "predict_only=true"])
    recs = _records(tmp_path / "test" / "predictions.jsonl")
    assert summary["n"] == 2 and summary["accuracy"] is None and all(r["score"] is None for r in recs)
    sub = json.loads((tmp_path / "test" / "submission.json").read_text())
    assert sub == [{"question_id": r["question_id"], "answer": r["prediction"]} for r in recs]
    assert [r["question_id"] for r in sub] == ["q1", "q2"]  # not integers: kept as stored


def test_chartqa_layout_is_scored_by_relaxed_accuracy_with_row_index_ids(tmp_path):
    # lmms-lab/ChartQA's test split: type, question, answer (one string), image; no question id column.
    import datasets
    from PIL import Image

    text = datasets.Value("string")
    feats = datasets.Features({"type": text, "question": text, "answer": text, "image": datasets.Image()})
    rows = {"type": ["human_test", "augmented_test", "human_test"], "question": ["what is the peak?"] * 3,
            "answer": ["12.5", "Yes", "40%"], "image": [Image.new("RGB", (50, 30), (i * 60, 0, 0)) for i in range(3)]}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=feats)}).save_to_disk(str(tmp_path / "c"))
    args = ["--config", "configs/eval/tiny.yaml", "data.source=chartqa", f"data.path={tmp_path / 'c'}",
            "data.generate=false", "data.max_samples=null", "batch_size=2", "data.split=test",
            f"output_dir={tmp_path / 'ev'}"]
    summary = main(args)
    recs = _records(tmp_path / "ev" / "predictions.jsonl")
    assert summary["metric"] == "relaxed_accuracy" and summary["n"] == 3
    assert [r["question_id"] for r in recs] == ["0", "1", "2"]
    assert [r["answers"] for r in recs] == [["12.5"], ["Yes"], ["40%"]]
    assert sorted(summary["by_type"]) == ["augmented_test", "human_test"]
    from eval.metrics import relaxed_accuracy
    assert [r["score"] for r in recs] == [relaxed_accuracy(r["prediction"], r["answers"]) for r in recs]
    assert main(args)["evaluated_now"] == 0  # the row-index ids resume like any other
    sub = json.loads((tmp_path / "ev" / "submission.json").read_text())
    assert sub == [{"question_id": i, "answer": r["prediction"]} for i, r in enumerate(recs)]  # integer ids


def test_boundary_settings_are_rejected():
    # token_fraction is in (0, 1]; batch_size and max_new_tokens are positive integers.
    with pytest.raises(ValueError, match=r"token_fraction.*\b0\b"):
        load_eval_cfg("configs/eval/tiny.yaml", ["token_fraction=0"])
    assert load_eval_cfg("configs/eval/tiny.yaml", ["token_fraction=1"]).token_fraction == 1
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        load_eval_cfg("configs/eval/tiny.yaml", ["batch_size=0"])
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer, got 0"):
        load_eval_cfg("configs/eval/tiny.yaml", ["max_new_tokens=0"])


def test_target_fraction_box_edges_and_a_non_square_image():
    pos = torch.tensor([[0.25, 0.5]])  # (row, col): x = W/2, y = H/4, exact in binary
    # [x0, y0, x1, y1): a centre on x0 or y0 is inside, one on x1 or y1 outside.
    assert target_fraction(pos, [50, 0, 100, 100], (100, 100)) == 1.0
    assert target_fraction(pos, [0, 0, 50, 100], (100, 100)) == 0.0
    assert target_fraction(pos, [0, 25, 100, 100], (100, 100)) == 1.0
    assert target_fraction(pos, [0, 0, 100, 25], (100, 100)) == 0.0
    # image_size is (W, H): in a 200 x 100 image the token centre is at x = 100, y = 25.
    assert target_fraction(pos, [90, 20, 110, 30], (200, 100)) == 1.0
    assert target_fraction(pos, [40, 40, 60, 60], (200, 100)) == 0.0
    # No tokens (or no box): no share, rather than NaN.
    assert target_fraction(torch.zeros(0, 2), [0, 0, 10, 10], (10, 10)) is None
    assert target_fraction(pos, None, (10, 10)) is None


def test_summary_fields_by_hand():
    recs = [{"score": 1.0, "question_type": "a", "tokens": 4, "latency_s": 0.1, "target_fraction": 0.5},
            {"score": 0.0, "question_type": "b", "tokens": 6, "latency_s": 0.3, "target_fraction": None},
            {"score": 0.5, "question_type": "b", "tokens": 8, "latency_s": 0.5, "target_fraction": 0.25}]
    s = summarize(recs, flops_fraction=0.3)
    assert s["n"] == 3 and s["accuracy"] == 0.5 and s["mean_visual_tokens"] == 6
    assert s["latency_s_per_sample"] == pytest.approx(0.3) and s["visual_flops_fraction"] == 0.3
    assert s["target_fraction"] == 0.375  # the record without a box does not count
    assert s["by_type"] == {"a": {"n": 1, "accuracy": 1.0, "target_fraction": 0.5},
                            "b": {"n": 2, "accuracy": 0.25, "target_fraction": 0.25}}
    unscored = summarize([{"score": None, "tokens": 4}])  # predict_only
    assert unscored["accuracy"] is None and unscored["by_type"][""]["accuracy"] is None


def test_read_done_cuts_an_unterminated_last_line_even_when_it_parses(tmp_path):
    from eval.run_eval import _read_done

    p = tmp_path / "predictions.jsonl"
    p.write_text('{"question_id": "a"}\n{"question_id": "b"}\n{"question_id": "c"}')  # killed before its newline
    assert [r["question_id"] for r in _read_done(p)] == ["a", "b"]
    assert p.read_text() == '{"question_id": "a"}\n{"question_id": "b"}\n'  # the next record starts its own line
    assert _read_done(tmp_path / "missing.jsonl") == []


def test_submission_order_and_id_types(tmp_path):
    from eval.run_eval import _write_submission

    # Dataset order, not record order; ids without a record are left out; one non-integer id keeps them all strings.
    recs = [{"question_id": "q2", "prediction": "b"}, {"question_id": "1", "prediction": "a"}]
    _write_submission(tmp_path / "s.json", recs, ["1", "q2", "q3"])
    assert json.loads((tmp_path / "s.json").read_text()) == [{"question_id": "1", "answer": "a"},
                                                             {"question_id": "q2", "answer": "b"}]
    _write_submission(tmp_path / "t.json", [{"question_id": "-3", "prediction": "x"}, {"question_id": 7,
                                                                                       "prediction": "y"}], [7, "-3"])
    assert json.loads((tmp_path / "t.json").read_text()) == [{"question_id": 7, "answer": "y"},
                                                             {"question_id": -3, "answer": "x"}]


def test_a_blank_among_other_answers_is_still_labelled():
    from eval.run_eval import EvalDataCfg, _check_labelled

    d = EvalDataCfg(source="textvqa", split="validation")
    _check_labelled([["a", "", "a"], ["b"]], ["q1", "q2"], d)  # one annotator left it blank: still scorable
    with pytest.raises(ValueError, match=r"1 of 2 questions have no reference answer \(e.g. question_id 'q2'\)"):
        _check_labelled([["a"], ["", " "]], ["q1", "q2"], d)


def test_flops_fraction_uses_the_mean_text_after_the_image():
    from eval.baselines import create_method
    from eval.run_eval import _flops_fraction

    torch.manual_seed(0)
    model, processor = build_model("tiny")
    method = create_method("uniform", model, 0.25)
    first = processor.encode_prompt("x").index(processor.image_token_id)
    assert first > 0  # text (BOS) before the image, so n_before matters
    recs = [{"prompt_text_tokens": first + 4}, {"prompt_text_tokens": first + 8}]  # 4 and 8 after the image: 6
    want = visual_flops_fraction(model.config.text_config, method.visual_per_layer(), method.full_tokens,
                                 n_before=first, n_after=6)
    assert _flops_fraction(method, processor, recs) == pytest.approx(want)
    assert _flops_fraction(method, processor, []) is None
    # A record resumed from a folder that predates prompt_text_tokens does not count: before, it was read as 0 text
    # tokens, i.e. first + 4, first + 8 and -first after the image, a mean of (12 - first) / 3 instead of 6.
    assert _flops_fraction(method, processor, recs + [{}]) == pytest.approx(want)
    bare = visual_flops_fraction(model.config.text_config, method.visual_per_layer(), method.full_tokens,
                                 n_before=first, n_after=0)
    assert _flops_fraction(method, processor, [{}]) == pytest.approx(bare)  # nothing to go on: no text after


def test_records_carry_their_own_tokens_latency_and_prompt_length(bench, tmp_path, monkeypatch):
    """Per-row fields: each row's token count, the batch's time over its size, the prompt's text tokens."""
    import dataclasses
    import itertools

    import eval.run_eval as run_eval

    real_create = run_eval.create_method

    def create(*args, **kwargs):
        method = real_create(*args, **kwargs)
        real_generate = method.generate

        def generate(*a, **kw):  # distinct token counts per row: 32, 31, 30
            res = real_generate(*a, **kw)
            return dataclasses.replace(res, tokens=res.tokens - torch.arange(len(res.tokens)))

        method.generate = generate
        return method

    monkeypatch.setattr(run_eval, "create_method", create)
    ticks = itertools.count(step=6.0)  # every batch takes 6 "seconds"
    monkeypatch.setattr(run_eval, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    main(_args(tmp_path / "ev", bench))  # 7 questions in batches of 3, 3, 1
    recs = _records(tmp_path / "ev" / "predictions.jsonl")
    assert [r["tokens"] for r in recs] == [32, 31, 30, 32, 31, 30, 32]
    assert [r["latency_s"] for r in recs] == [2.0] * 6 + [6.0]
    _, processor = build_model("tiny")
    assert [r["prompt_text_tokens"] for r in recs] == [len(processor.encode_prompt(r["question"])) - processor.budget
                                                       for r in recs]


def _textvqa_dir(path: Path, question_ids: list[str]) -> Path:
    """A TextVQA-layout validation split (question_id, question, image, ten answers) with the given ids."""
    import datasets
    from PIL import Image

    text = datasets.Value("string")
    feats = datasets.Features({"question_id": text, "question": text, "image": datasets.Image(),
                               "answers": datasets.List(text)})
    n = len(question_ids)
    rows = {"question_id": question_ids, "question": ["what is written?"] * n, "answers": [["abc"] * 10] * n,
            "image": [Image.new("RGB", (40, 60), (i * 40, 0, 0)) for i in range(n)]}
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(rows, features=feats)}).save_to_disk(str(path))
    return path


def _textvqa_args(out: Path, data: Path, *extra: str) -> list[str]:
    return ["--config", "configs/eval/tiny.yaml", "data.source=textvqa", f"data.path={data}", "data.generate=false",
            "data.max_samples=null", "data.split=validation", "batch_size=2", f"output_dir={out}", *extra]


def test_repeated_question_ids_are_refused_by_name(tmp_path):
    # Ids 1, 2, 2, 3: the second "2" was evaluated on a fresh run, but after a kill that left only the first "2" in
    # the JSONL a resume skipped it (its id was done): n fell to 3 and "resumed" said 3 for 2 records; the submission
    # listed "2" twice with one answer. Ids key both, so a repeat is refused, naming it.
    data = _textvqa_dir(tmp_path / "d", ["1", "2", "2", "3"])
    with pytest.raises(ValueError, match=r"1 question_id\(s\) occur more than once \(e.g. '2'\)"):
        main(_textvqa_args(tmp_path / "ev", data))
    with pytest.raises(ValueError, match="'2'"):
        main(_textvqa_args(tmp_path / "ev", data, "predict_only=true"))


def test_an_empty_split_is_refused_by_name(tmp_path, monkeypatch):
    # A split without rows (here the TextVQA split filtered to none) wrote predictions, a submission and a summary
    # with n 0 and accuracy null, exiting as a success; it is refused, naming the split, and writes nothing.
    import training.data

    data = _textvqa_dir(tmp_path / "d", ["1", "2"])
    real = training.data.load_configured
    monkeypatch.setattr(training.data, "load_configured", lambda d, **kw: real(d, **kw).select([]))
    with pytest.raises(ValueError, match="data.split='validation' of data.source='textvqa' at .* has no rows"):
        main(_textvqa_args(tmp_path / "ev", data))
    assert not (tmp_path / "ev" / "summary.json").exists()


def test_resume_refuses_records_of_questions_the_dataset_no_longer_holds(tmp_path):
    # Same settings, but the split at data.path was replaced (ids 1-5, then 1, 2, 3, 9, 10): the resume kept the
    # records of 4 and 5, evaluated 9 and 10 and summarised n = 7 questions of a 5-row dataset. Refused instead.
    import shutil

    from eval.run_eval import ResumeMismatchError

    data = _textvqa_dir(tmp_path / "d", ["1", "2", "3", "4", "5"])
    assert main(_textvqa_args(tmp_path / "ev", data))["n"] == 5
    shutil.rmtree(data)
    _textvqa_dir(data, ["1", "2", "3", "9", "10"])
    with pytest.raises(ResumeMismatchError, match=r"holds 2 question\(s\) not in the dataset \(e.g. question_id '4'\)"):
        main(_textvqa_args(tmp_path / "ev", data))
    fresh = main(_textvqa_args(tmp_path / "ev", data, "resume=false"))
    assert fresh["n"] == 5 and fresh["evaluated_now"] == 5


@pytest.mark.parametrize("override,match", [
    ("seed=abc", "seed must be an integer >= 0, got 'abc'"),  # was int()'s message, without the key
    ("seed=1.5", "seed must be an integer >= 0, got 1.5"),  # was taken (a random init under a float seed)
    ("seed=true", "seed must be an integer >= 0, got True"),
    ("num_workers=abc", "num_workers must be an integer >= 0, got 'abc'"),  # was a TypeError in the DataLoader
    ("num_workers=-1", "num_workers must be an integer >= 0, got -1"),
    ("output_dir=null", "output_dir must be a non-empty path, got None"),  # was a TypeError from Path(None)
    ("checkpoint=5", "checkpoint must be a path or null, got 5"),  # was a TypeError
    ("model=abc", "model must be a mapping of settings, got 'abc'"),  # was an AttributeError
    ("baseline=[1]", r"baseline must be a mapping of settings, got \[1\]"),  # was a TypeError from **
])
def test_wrongly_typed_settings_are_rejected_by_name(override, match):
    with pytest.raises(ValueError, match=match):
        load_eval_cfg("configs/eval/tiny.yaml", [override])


def test_starting_over_removes_the_last_runs_summary(bench, tmp_path, monkeypatch):
    # resume=false with another method, killed in its first batch: the folder held the new run.json and an empty
    # JSONL beside the previous run's summary.json (arr_coc, n 3) and submission.json, read as this run's results.
    import eval.run_eval as run_eval

    out = tmp_path / "ev"
    main(_args(out, bench, "data.max_samples=3"))
    assert (out / "summary.json").is_file() and (out / "submission.json").is_file()
    real_create = run_eval.create_method

    def create(*args, **kwargs):
        method = real_create(*args, **kwargs)

        def killed(*a, **kw):
            raise KeyboardInterrupt

        method.generate = killed
        return method

    monkeypatch.setattr(run_eval, "create_method", create)
    with pytest.raises(KeyboardInterrupt):
        main(_args(out, bench, "data.max_samples=3", "method=uniform", "token_fraction=0.25", "resume=false"))
    assert json.loads((out / "run.json").read_text())["method"] == "uniform"
    assert not (out / "summary.json").exists() and not (out / "submission.json").exists()
