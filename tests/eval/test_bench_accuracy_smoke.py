"""The accuracy-vs-budget benchmark driver runs end to end in ``--smoke`` mode (tiny models, CPU)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_bench_accuracy_budget_smoke(tmp_path):
    from scripts.bench_accuracy_budget import TRAINING_FREE, main

    res = main(["--smoke", "--out", str(tmp_path / "results"), "--work", str(tmp_path / "runs")])
    md = res["md"].read_text()
    assert "SMOKE RUN" in md and "meaningless" in md  # never mistaken for real numbers
    assert res["png"].stat().st_size > 0 and res["heatmap"].stat().st_size > 0
    assert res["failures"] == []
    results = res["results"]
    for method in ("full", "arr_coc_projection", "arr_coc_bandit", "uniform_trained", *TRAINING_FREE):
        assert method in results and f"| {method} |" in md
    for method in ("arr_coc_projection", *TRAINING_FREE):
        assert set(results[method]) == {1.0, 0.5, 0.25, 0.125}
        for f, summaries in results[method].items():
            assert summaries[0]["mean_visual_tokens"] == round(64 * f)  # exactly the budget, every method
    saved = json.loads((tmp_path / "results" / "accuracy_budget.json").read_text())
    assert saved["meta"]["smoke"] is True
    assert "## Does the allocation follow the question?" in md
    for name, sens in saved["meta"]["sensitivity"].items():
        assert sens["images"] > 0 and 0 <= sens["moved"] <= 1 and 0 <= sens["in_box"] <= 1, (name, sens)
    g = saved["meta"]["grounding"]
    assert g["images"] > 0 and 0 <= g["attention"] <= 1 and 0 < g["tokens"] < 1 and g["layer"] == 1
    assert "Where the full-token model's LLM looks" in md
    assert "## At 100% of the tokens" in md  # the full model's per-type accuracy


def test_bench_accuracy_budget_parallel_children_and_reuse(tmp_path):
    # --parallel 2: every model trains in its own child process (private process group, own log); the second
    # invocation reuses every finished run instead of training again, and the report lists each run's steps.
    from scripts.bench_accuracy_budget import main

    # --finetune-fractions: arr_coc_finetuned starts from the grounded run once that one has finished (the smoke runs
    # save only their last step, so starting early would find no weights and fail).
    args = ["--smoke", "--parallel", "2", "--fractions", "1", "0.25", "--relevance-weight", "0.5",
            "--grounding-weight", "2", "--finetune-fractions", "0.25", "1", "--finetune-steps", "3",
            "--finetune-lr", "0.01", "--bandit-after-steps", "3", "--out", str(tmp_path / "results"),
            "--work", str(tmp_path / "runs")]
    res = main(args)
    assert res["failures"] == []
    logs = sorted((tmp_path / "runs" / "seed0").glob("*/train.log"))
    assert len(logs) == 8  # full, projection, bandit, relevance-distilled and grounded projection, uniform at 25%, the
    # fine-tune of the grounded model, and the bandit put on the grounded model
    md = res["md"].read_text()
    assert "## Training runs" in md and md.count("| step 2 of 2 |") == 6 and md.count("| step 3 of 3 |") == 2
    ft_dir = tmp_path / "runs" / "seed0" / "arr_coc_finetuned"
    grounded_final = tmp_path / "runs" / "seed0" / "arr_coc_grounded" / "checkpoints" / "step_00000002"
    assert f"initialised weights from {grounded_final / 'model.safetensors'}" in (ft_dir / "train.log").read_text()
    ft = json.loads((ft_dir / "config.json").read_text())["train"]
    assert ft["train"]["budget_fractions"] == [0.25, 1.0] and ft["train"]["grounding_weight"] == 2
    assert ft["optim"]["lr"] == 0.01 and set(res["results"]["arr_coc_finetuned"]) == {1.0, 0.25}
    # --bandit-after-steps: a fresh bandit on the grounded model's weights, the grounding loss kept on.
    bg_dir = tmp_path / "runs" / "seed0" / "arr_coc_bandit_grounded"
    assert (f"initialised weights from {grounded_final / 'model.safetensors'} (kept fresh: arr_coc.attending.)"
            in (bg_dir / "train.log").read_text())
    bg = json.loads((bg_dir / "config.json").read_text())
    assert bg["model"]["arr_coc"]["allocator"] == "bandit" and bg["train"]["train"]["grounding_weight"] == 2
    assert bg["model"]["arr_coc"]["allocator_kwargs"]["utility_weight"] == 0.0
    assert set(res["results"]["arr_coc_bandit_grounded"]) == {1.0, 0.25}
    for name, key, w in (("arr_coc_relevance", "relevance_weight", 0.5), ("arr_coc_grounded", "grounding_weight", 2)):
        assert f"| {name} |" in md and set(res["results"][name]) == {1.0, 0.25}
        state = (tmp_path / "runs" / "seed0" / name / "config.json")
        assert json.loads(state.read_text())["train"]["train"][key] == w
    # The heat-map has one row per gradient-trained ARR-COC model (the bandit's budgets come from its own policy).
    assert "rows: arr_coc_projection, arr_coc_relevance, arr_coc_grounded, arr_coc_finetuned;" in md
    sizes = {p: p.stat().st_size for p in logs}
    res2 = main(args)
    assert {p: p.stat().st_size for p in logs} == sizes  # nothing retrained
    assert res2["results"]["arr_coc_projection"][0.25][0]["accuracy"] == \
        res["results"]["arr_coc_projection"][0.25][0]["accuracy"]
    # --total-minutes: two timed probe evaluations of the full model choose the test rows per evaluation (here capped
    # by --eval-samples); a budget that training already spent is refused by name.
    # --models leaves the bandit out (its finished run is simply not used); --budget-fractions adds the model trained
    # on a random budget per batch (with the grounding loss, as --grounding-weight > 0).
    res3 = main([*args, "--total-minutes", "30", "--eval-samples", "5", "--models", "arr_coc_projection",
                 "--uniform-fractions", "0.25", "--budget-fractions", "0.25", "1"])
    probe = json.loads((tmp_path / "results" / "accuracy_budget.json").read_text())["meta"]["eval_probe"]
    assert probe["rows"] == 5 and probe["rows_fit"] >= 5 and probe["seconds_per_row"] > 0
    assert probe["evals"] == 1 + 6 + 6 * 2 + 1  # full; 6 baselines at 25%; 6 ARR-COC models at 2 budgets; uniform 25%
    assert "arr_coc_bandit" not in res3["results"] and "| arr_coc_bandit |" not in res3["md"].read_text()
    assert set(res3["results"]["arr_coc_multibudget"]) == {1.0, 0.25}
    multi = json.loads((tmp_path / "runs" / "seed0" / "arr_coc_multibudget" / "config.json").read_text())["train"]
    assert multi["train"]["budget_fractions"] == [0.25, 1.0] and multi["train"]["grounding_weight"] == 2
    assert {s["n"] for r in res3["results"].values() for ss in r.values() for s in ss} == {5}
    assert "Test rows per evaluation chosen by `--total-minutes`: 5" in res3["md"].read_text()
    with pytest.raises(ValueError, match="--total-minutes leaves"):
        main([*args, "--total-minutes", "0.01", "--reserve-seconds", "0"])


def test_bench_reruns_follow_the_requested_runs(tmp_path, monkeypatch):
    # Only the full model (--models with none, one fraction): the report says the heat-map is not drawn instead of
    # failing at the end (IndexError). A seed whose full evaluation fails is not replaced by another seed's at 100%.
    import scripts.bench_accuracy_budget as bench
    from scripts.bench_accuracy_budget import main

    real_eval = bench._eval

    def failing_seed1_full(run, method, frac, a, out, extra, cache):
        if "seed1" in str(out) and out.name.startswith("full_"):
            raise ValueError("simulated: cannot evaluate")
        return real_eval(run, method, frac, a, out, extra, cache)

    work, out = tmp_path / "runs", tmp_path / "results"
    base = ["--smoke", "--fractions", "1", "--models", "--out", str(out), "--work", str(work)]
    monkeypatch.setattr(bench, "_eval", failing_seed1_full)
    res = main([*base, "--seeds", "0", "1"])
    assert res["heatmap"] is None and "not drawn: no gradient-trained ARR-COC model" in res["md"].read_text()
    assert [s["seed"] for s in res["results"]["full"][1.0]] == [0]
    assert [s["seed"] for s in res["results"]["uniform"][1.0]] == [0]  # was [0, 0]: seed 0's counted twice
    assert [s["seed"] for s in res["results"]["uniform_trained"][1.0]] == [0]
    assert any("seed1" in f and "simulated" in f for f in res["failures"])
    monkeypatch.setattr(bench, "_eval", real_eval)
    # More steps: the finished run is resumed (not reused as it is), and evaluated afresh in a folder of its own step
    # (the old folder's predictions are another checkpoint's: resuming them was refused, and every evaluation was
    # reported as "not evaluated").
    res = main([*base, "--steps", "3"])
    assert res["failures"] == [] and "| step 3 of 3 |" in res["md"].read_text()
    assert (work / "seed0" / "eval" / "full_64_step2").is_dir() and (work / "seed0" / "eval" / "full_64_step3").is_dir()
    # Fewer steps than the checkpoint holds, or another trajectory setting: refused by name, not reused.
    with pytest.raises(ValueError, match="past the requested train.max_steps=1"):
        main([*base, "--steps", "1"])
    with pytest.raises(ValueError, match="train.batch_size"):
        main([*base, "--steps", "3", "--train-override", "train.batch_size=3"])


def test_train_curve_of_a_log_without_rows_is_none(tmp_path):
    # The --minutes cap can stop a run before its first logged step: its header-only log has no curve (it crashed
    # the whole report).
    import argparse

    from scripts.bench_accuracy_budget import _train_curve

    (tmp_path / "log.csv").write_text("step,epoch,loss,accuracy,lr,samples_per_s\n")
    assert _train_curve(tmp_path, argparse.Namespace(onset_window=500, onset_accuracy=None)) is None


def test_bench_accuracy_budget_arguments_are_checked(tmp_path, monkeypatch):
    import tempfile

    from scripts.bench_accuracy_budget import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a smoke run's temporary folder goes
    with pytest.raises(ValueError, match="needs --minutes"):
        main(["--smoke", "--steps", "auto"])
    with pytest.raises(ValueError, match="'many'"):
        main(["--smoke", "--steps", "many"])
    with pytest.raises(ValueError, match="--parallel must be >= 1, got 0"):
        main(["--smoke", "--parallel", "0"])
    with pytest.raises(ValueError, match="--relevance-weight must be a finite number >= 0, got -1"):
        main(["--smoke", "--relevance-weight", "-1"])
    with pytest.raises(ValueError, match="--grounding-weight must be a finite number >= 0, got nan"):
        main(["--smoke", "--grounding-weight", "nan"])
    with pytest.raises(ValueError, match="must be below --total-minutes"):
        main(["--smoke", "--steps", "auto", "--minutes", "5", "--total-minutes", "4"])
    with pytest.raises(ValueError, match="--uniform-fractions must be fractions below 1"):
        main(["--smoke", "--uniform-fractions", "0.3"])
    with pytest.raises(ValueError, match="--budget-fractions must lie in"):
        main(["--smoke", "--budget-fractions", "0"])
    with pytest.raises(ValueError, match="--finetune-fractions must lie in"):
        main(["--smoke", "--finetune-fractions", "1.5", "--finetune-steps", "2"])
    with pytest.raises(ValueError, match="--finetune-fractions needs --finetune-steps >= 1, got None"):
        main(["--smoke", "--finetune-fractions", "0.25", "1"])
    with pytest.raises(ValueError, match="neither is trained here"):
        main(["--smoke", "--finetune-fractions", "0.25", "1", "--finetune-steps", "2", "--models"])
    with pytest.raises(ValueError, match="--bandit-after-steps must be >= 1, got 0"):
        main(["--smoke", "--bandit-after-steps", "0"])
    with pytest.raises(ValueError, match="--bandit-after-steps starts from arr_coc_grounded"):
        main(["--smoke", "--bandit-after-steps", "2", "--grounding-weight", "0"])
    with pytest.raises(ValueError, match="--finetune-lr must be a finite number > 0, got -1"):
        main(["--smoke", "--finetune-lr", "-1"])
    with pytest.raises(ValueError, match="--onset-window must be >= 1 step, got 0"):
        main(["--smoke", "--onset-window", "0"])
    with pytest.raises(ValueError, match=r"--onset-accuracy must lie in \[0, 1\], got 1.5"):
        main(["--smoke", "--onset-accuracy", "1.5"])
    with pytest.raises(ValueError, match="--eval-samples must be >= 1"):
        main(["--smoke", "--eval-samples", "0"])
    # The smoke geometry: K = 4 patches, N = 64 tokens. At 4 tokens (T = K) ARR-COC would have no choice at all.
    with pytest.raises(ValueError, match=r"T = 4 visual tokens for K = 4 patches.*K < T < N = 64"):
        main(["--smoke", "--train-fraction", "0.0625"])
    with pytest.raises(ValueError, match=r"T = 64 visual tokens"):
        main(["--smoke", "--train-fraction", "1"])
    # Every rejected smoke run removed its temporary folder (they used to pile up in /tmp).
    assert sorted(tmp_path.glob("acc_budget_smoke_*")) == []


@pytest.mark.slow
def test_bench_accuracy_budget_steps_auto(tmp_path):
    # --steps auto probes every model at once, then gives all of them the same step count, which the report states.
    from scripts.bench_accuracy_budget import main

    # The fine-tune of the grounded model is probed at --probe-steps too (it ran its full --finetune-steps, uncapped),
    # and, having its own step count, does not take part in choosing --steps.
    res = main(["--smoke", "--parallel", "4", "--fractions", "1", "0.25", "--steps", "auto", "--minutes", "0.5",
                "--probe-steps", "3", "--grounding-weight", "1", "--finetune-fractions", "0.25", "1",
                "--finetune-steps", "9", "--out", str(tmp_path / "results"), "--work", str(tmp_path / "runs")])
    md = res["md"].read_text()
    assert "Steps chosen by `--steps auto`" in md
    saved = json.loads((tmp_path / "results" / "accuracy_budget.json").read_text())
    steps = saved["meta"]["probe"]["steps"]
    assert "arr_coc_finetuned" not in saved["meta"]["probe"]["seconds_per_step_by_run"]
    probe_ft = json.loads(next((tmp_path / "runs" / "probe" / "seed0" / "arr_coc_finetuned" / "checkpoints").glob(
        "step_*/trainer_state.json")).read_text())
    assert probe_ft["step"] == 3
    # full, projection, bandit, grounded and uniform at 25% at the chosen steps; the fine-tune at its own 9
    assert steps >= 1 and md.count(f"| step {steps} of {steps}") + md.count("stopped early") == 5
    assert md.count("| step 9 of 9") == 1 or steps == 9


def test_parallel_children_split_the_cpus_between_them():
    # N training children share the CPUs: each gets cpus // N intra-op threads (at least 1) unless the caller chose.
    from scripts.bench_accuracy_budget import _child_threads

    assert _child_threads(2, {}, cpus=2) == {"OMP_NUM_THREADS": "1"}
    assert _child_threads(3, {}, cpus=16) == {"OMP_NUM_THREADS": "5"}
    assert _child_threads(4, {}, cpus=2) == {"OMP_NUM_THREADS": "1"}
    assert _child_threads(1, {}, cpus=8) == {"OMP_NUM_THREADS": "8"}
    assert _child_threads(2, {"OMP_NUM_THREADS": "3"}, cpus=16) == {}
    assert int(_child_threads(1, {})["OMP_NUM_THREADS"]) >= 1  # this machine's own CPU count


def test_reasked_questions_are_true_of_their_image_and_skip_rows_without_scenes(tmp_path):
    # _reasked feeds the heat-map and the query-sensitivity probe: digit questions about up to three shapes of one
    # stored scene, each with the box of the shape it names; a dataset without scenes yields nothing.
    import datasets
    from PIL import Image

    from scripts.bench_accuracy_budget import _bench_cfg, _reasked
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, Scene, make_benchmark

    data = tmp_path / "bench"
    make_benchmark(data, seed=0, sizes={"train": 2, "test": 6}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    ds = datasets.load_from_disk(str(data))["test"]
    got = list(_reasked(ds, _bench_cfg(str(data)), n_images=3))
    assert 1 <= len(got) <= 3
    ids = list(ds["question_id"])
    for image, asked, qid in got:
        row = ds[ids.index(qid)]
        scene = Scene.from_json(row["scene"])
        assert image.size == row["image"].size and 2 <= len(asked) == min(3, len(scene.objects))
        boxes = [tuple(o.box) for o in scene.objects[:3]]
        for q, box in zip(asked, boxes):
            assert tuple(q.target_box) == box and "digit" in q.question
    plain = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "question": ["what?"],
                                        "question_id": ["q0"]})
    assert list(_reasked(plain, _bench_cfg(None), n_images=1)) == []


def test_report_lists_each_seed_of_the_trained_models():
    # With several seeds the report adds one row per trained model and seed (full at 100%, the rest at the training
    # budget), named by the seed each evaluation carries, so a seed that failed to evaluate shifts nothing.
    from scripts.bench_accuracy_budget import _per_seed_lines

    def ev(seed, acc, digit, box):
        return {"seed": seed, "accuracy": acc, "by_type": {"digit": {"accuracy": digit}}, "target_fraction": box}

    results = {"full": {1.0: [ev(0, 0.2, 0.1, 0.11), ev(2, 0.3, 0.1, 0.11)]},
               "arr_coc_grounded": {0.25: [ev(0, 0.4, 0.36, 0.29)], 1.0: [ev(0, 0.1, 0.0, 0.11)]},
               "uniform_trained": {0.25: [ev(0, 0.23, 0.09, 0.19), ev(2, 0.22, 0.08, 0.19)]},
               "uniform": {0.25: [ev(0, 0.1, 0.0, 0.19)]}}
    methods = ["full", "arr_coc_grounded", "uniform_trained", "uniform"]
    lines = _per_seed_lines(results, methods, {"seeds": [0, 1, 2], "train_fraction": 0.25}, ["digit"])
    rows = [x for x in lines if x.startswith("| ") and not x.startswith("| method")]
    assert rows == ["| full | 100% | 0 | 20.0 | 10.0 | 11.0% | n/a |", "| full | 100% | 2 | 30.0 | 10.0 | 11.0% | n/a |",
                    "| arr_coc_grounded | 25% | 0 | 40.0 | 36.0 | 29.0% | n/a |",
                    "| uniform_trained | 25% | 0 | 23.0 | 9.0 | 19.0% | n/a |",
                    "| uniform_trained | 25% | 2 | 22.0 | 8.0 | 19.0% | n/a |"]
    assert _per_seed_lines(results, methods, {"seeds": [0], "train_fraction": 0.25}, ["digit"]) == []


def test_report_gives_each_trained_models_training_curve_and_onset(tmp_path):
    # The per-seed rows carry the run's last-window training accuracy and, with --onset-accuracy, the first window
    # whose mean reaches it, read from the run's log.csv (here: rows every 50 steps, windows of 100).
    import argparse
    import csv

    from scripts.bench_accuracy_budget import _per_seed_lines, _train_curve

    def run(name, accs):
        d = tmp_path / name
        d.mkdir()
        with open(d / "log.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "accuracy"])
            w.writerows((50 * (i + 1), a) for i, a in enumerate(accs))
        return d

    reads = run("reads", [0.2, 0.2, 0.3, 0.5, 0.6, 0.7])  # windows: 0.2, 0.4, 0.65 -> onset (100, 200]
    never = run("never", [0.2, 0.3, 0.2])  # windows: 0.25, 0.2 (partial, steps 100-150)
    a = argparse.Namespace(onset_accuracy=0.35, onset_window=100)
    tc_reads, tc_never = _train_curve(reads, a), _train_curve(never, a)
    assert tc_reads["onset"] == (100, 200) and tc_reads["last_window_accuracy"] == pytest.approx(0.65)
    assert tc_never["onset"] is None and tc_never["last_window"] == [100, 150]
    assert _train_curve(tmp_path / "nolog", a) is None

    def ev(seed, tc):
        return {"seed": seed, "accuracy": 0.5, "by_type": {"digit": {"accuracy": 0.4}}, "target_fraction": 0.3,
                "train_curve": tc}

    results = {"full": {1.0: [ev(0, tc_never), ev(1, None)]}, "arr_coc_grounded": {0.25: [ev(0, tc_reads)]}}
    meta = {"seeds": [0, 1], "train_fraction": 0.25, "onset_accuracy": 0.35, "onset_window": 100}
    lines = _per_seed_lines(results, ["full", "arr_coc_grounded"], meta, ["digit"])
    assert "onset (first 100-step window of mean training accuracy ≥ 0.35)" in lines[3]
    rows = [x for x in lines if x.startswith("| ") and not x.startswith("| method")]
    assert rows == ["| full | 100% | 0 | 50.0 | 40.0 | 30.0% | 0.20 | none |",
                    "| full | 100% | 1 | 50.0 | 40.0 | 30.0% | n/a | n/a |",
                    "| arr_coc_grounded | 25% | 0 | 50.0 | 40.0 | 30.0% | 0.65 | 100-200 |"]


def test_bench_evaluates_a_given_benchmark_made_at_other_sizes(tmp_path):
    # The real (non --smoke) path, as scripts/gpu_accuracy_session.sh runs it: the benchmark is made beforehand at its
    # own sizes (TRAIN_SIZE/TEST_SIZE) and the training runs are told data.generate=false. The evaluations read it as
    # it is; they used to apply the eval config's `generate: true` check and refuse it (a CPU dry run of the session
    # script found it), after every model had trained.
    from scripts.bench_accuracy_budget import main
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark

    data = tmp_path / "bench"
    make_benchmark(data, seed=0, sizes={"train": 12, "test": 6}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    res = main(["--data", str(data), "--train-config", "configs/train/tiny.yaml", "--eval-config",
                "configs/eval/tiny.yaml", "--steps", "2", "--fractions", "1", "0.5", "--train-fraction", "0.5",
                "--models", "--grounding-weight", "0", "--uniform-fractions", "0.5", "--eval-samples", "4",
                "--work", str(tmp_path / "runs"), "--out", str(tmp_path / "results"), "--train-override",
                "data.generate=false", "dist.fsdp=off", "train.batch_size=4", "train.save_every=null"])
    assert res["failures"] == []
    assert res["results"]["full"][1.0][0]["n"] == 4 and res["results"]["uniform_trained"][0.5][0]["n"] == 4
    assert "SMOKE RUN" not in res["md"].read_text()


def test_bench_label_free_runs_start_from_the_reader(tmp_path, capsys):
    # --saliency-after-steps: arr_coc_salient (saliency distillation, the gate off, no box labels) and its control
    # uniform_continued (uniform pooling) both start from the uniform-pooling model of the training budget once it has
    # finished, and train the given steps there; the control is evaluated at its own budget only.
    from scripts.bench_accuracy_budget import main

    args = ["--smoke", "--fractions", "1", "0.25", "--models", "--saliency-after-steps", "3", "--saliency-weight",
            "0.5", "--finetune-lr", "0.01", "--out", str(tmp_path / "results"), "--work", str(tmp_path / "runs")]
    res = main(args)
    assert res["failures"] == []
    seed0 = tmp_path / "runs" / "seed0"
    reader = seed0 / "uniform_trained_16" / "checkpoints" / "step_00000002" / "model.safetensors"
    assert capsys.readouterr().err.count(f"initialised weights from {reader}\n") == 2  # both, from its last step
    for name in ("arr_coc_salient", "uniform_continued"):
        cfg = json.loads((seed0 / name / "config.json").read_text())
        assert cfg["train"]["train"]["init_from"] == str(seed0 / "uniform_trained_16"), name
        assert cfg["train"]["train"]["max_steps"] == 3 and cfg["train"]["optim"]["lr"] == 0.01, name
        assert (seed0 / name / "checkpoints" / "step_00000003").is_dir(), name
    sal = json.loads((seed0 / "arr_coc_salient" / "config.json").read_text())
    assert sal["train"]["train"]["saliency_weight"] == 0.5 and sal["train"]["train"]["grounding_weight"] == 0
    assert sal["model"]["arr_coc"]["allocator"] == "projection" and sal["model"]["arr_coc"]["straight_through"] is False
    cont = json.loads((seed0 / "uniform_continued" / "config.json").read_text())
    assert cont["model"]["arr_coc"]["allocator"] == "uniform" and cont["model"]["arr_coc"]["budget"] == 16
    assert cont["train"]["train"]["saliency_weight"] == 0
    results = res["results"]
    assert set(results["arr_coc_salient"]) == {1.0, 0.25} and set(results["uniform_continued"]) == {0.25}
    assert results["uniform_continued"][0.25][0]["mean_visual_tokens"] == 16
    md = res["md"].read_text()
    assert "| arr_coc_salient |" in md and "| uniform_continued |" in md
    assert "rows: arr_coc_salient;" in md  # gradient-trained: its heat-map row
    # --saliency-from full: the full-token model is the reader, although the uniform-pooling one is trained too.
    res_full = main(["--smoke", "--fractions", "1", "0.25", "--models", "--saliency-after-steps", "2",
                     "--saliency-from", "full", "--work", str(tmp_path / "from_full"),
                     "--out", str(tmp_path / "results_full")])
    assert res_full["failures"] == [] and (tmp_path / "from_full" / "seed0" / "uniform_trained_16").is_dir()
    for name in ("arr_coc_salient", "uniform_continued"):
        cfg = json.loads((tmp_path / "from_full" / "seed0" / name / "config.json").read_text())
        assert cfg["train"]["train"]["init_from"] == str(tmp_path / "from_full" / "seed0" / "full"), name
    # Without the uniform model of the training budget, the default reader is refused up front.
    with pytest.raises(ValueError, match="--saliency-after-steps starts from the uniform-pooling model trained at "
                                         "--train-fraction 0.25, which is not trained here"):
        main(["--smoke", "--fractions", "1", "0.5", "0.25", "--uniform-fractions", "0.5", "--models",
              "--saliency-after-steps", "3", "--work", str(tmp_path / "other")])
    assert not (tmp_path / "other" / "seed0").exists()  # refused before any training
