"""In-process smoke test of the training recipe: ``training.train.main([...])`` on a generated mini-benchmark."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from models.builders import build_model
from models.vlm import load_state_dict_nonstrict
from training.train import TrainRecipe, gini, main



@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark

    path = tmp_path_factory.mktemp("bench") / "mini"
    make_benchmark(path, seed=0, sizes={"train": 16, "val": 4}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    return path


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_main_trains_checkpoints_and_resumes(bench, tmp_path):
    out = tmp_path / "run"
    args = ["--config", "configs/train/tiny.yaml", f"output_dir={out}", f"data.path={bench}", "data.generate=false",
            "dist.fsdp=off", "train.max_steps=3", "train.batch_size=4", "train.grad_accum=2", "train.save_every=2"]
    rows = main(args)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in rows)
    logged = _rows(out / "log.csv")
    assert [int(r["step"]) for r in logged] == [1, 2, 3]
    assert {"loss", "accuracy", "tokens_per_s", "budget_mean", "budget_gini"} <= set(logged[0])
    assert float(logged[0]["budget_mean"]) == pytest.approx(32 / 16)  # exact budgets: 32 tokens over 16 patches
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step_00000002", "step_00000003"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000003"

    # The safetensors weights are complete and differ from a fresh initialisation (training happened).
    from safetensors.torch import load_file

    sd = load_file(out / "checkpoints" / "step_00000003" / "model.safetensors")
    torch.manual_seed(0)
    fresh, _ = build_model("tiny")
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    load_state_dict_nonstrict(fresh, sd)
    assert set(sd) == set(before)
    assert any(not torch.equal(before[k], v) for k, v in fresh.state_dict().items())

    # Resume from step 2 in a fresh recipe: step 3 is reproduced exactly.
    rows2 = main(args + ["--resume", str(out / "checkpoints" / "step_00000002")])
    assert [r["step"] for r in rows2] == [3]
    assert rows2[0]["loss"] == pytest.approx(rows[2]["loss"], rel=1e-6)
    assert [int(r["step"]) for r in _rows(out / "log.csv")] == [1, 2, 3]  # rows past the checkpoint were replaced


def test_bandit_feedback_guard():
    calls = []

    class FakeBandit:
        registry_name = "bandit"

        def update(self, rewards):
            calls.append(rewards.clone())

    recipe = TrainRecipe.__new__(TrainRecipe)
    recipe.cfg = SimpleNamespace(train=SimpleNamespace(bandit_feedback=True))
    recipe.device = torch.device("cpu")
    recipe.model = SimpleNamespace(arr_coc=SimpleNamespace(attending=FakeBandit()))
    recipe._bandit_feedback(torch.tensor([1.0, 0.0]))
    assert len(calls) == 1 and calls[0].tolist() == [1.0, 0.0]
    recipe.model.arr_coc.attending = SimpleNamespace(registry_name="projection")  # no update(): silently skipped
    recipe._bandit_feedback(torch.tensor([1.0]))
    recipe.cfg.train.bandit_feedback = False
    recipe.model.arr_coc.attending = FakeBandit()
    recipe._bandit_feedback(torch.tensor([1.0]))
    assert len(calls) == 1


def test_gini():
    x = torch.tensor([[2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 8.0]])
    torch.testing.assert_close(gini(x), torch.tensor([0.0, 0.75], dtype=torch.float64))


def test_max_minutes_checkpoints_stops_and_resumes(bench, tmp_path):
    out = tmp_path / "run"
    args = ["--config", "configs/train/tiny.yaml", f"output_dir={out}", f"data.path={bench}", "data.generate=false",
            "dist.fsdp=off", "train.max_steps=3", "train.batch_size=4"]
    # A budget far below one step's time: the run stops after its first step, with a checkpoint of that step.
    rows = main(args + ["train.max_minutes=1e-6"])
    assert [r["step"] for r in rows] == [1]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000001"
    rest = main(args + ["--resume"])
    assert [r["step"] for r in rest] == [2, 3]
    with pytest.raises(ValueError, match="train.max_minutes must be a positive number"):
        main(args + ["train.max_minutes=0"])


def test_fp16_on_cpu_is_refused(bench, tmp_path):
    # fp16 needs a gradient scaler and CUDA; bf16 runs on CPU too (tests/training/test_fsdp.py exercises it).
    with pytest.raises(ValueError, match="'fp16' is for CUDA"):
        main(["--config", "configs/train/tiny.yaml", f"output_dir={tmp_path / 'r'}", f"data.path={bench}",
              "data.generate=false", "dist.device=cpu", "dist.mixed_precision=fp16", "train.max_steps=1"])


def test_rank_batches_follow_the_seeded_epoch_permutations():
    """Step s takes rows perm_e[o : o + G] (e, o from s), micro-batch m of rank r the slice m * world + r, across
    epoch boundaries and from any start step (resume), and the ranks' micro-batches tile each global batch."""
    import numpy as np

    from training.train import _RankBatches

    n, g, world, accum, steps = 10, 4, 2, 2, 7  # 2 steps per epoch, 2 rows left over each epoch
    kw = {"seed": 3, "global_batch": g, "world": world, "accum": accum, "max_steps": steps}
    per_rank = [list(_RankBatches(n, rank=r, start_step=0, **kw)) for r in range(world)]
    for s in range(steps):
        epoch, pos = divmod(s, n // g)
        want = np.random.default_rng([3, epoch]).permutation(n)[pos * g:(pos + 1) * g].tolist()
        got = []
        for m in range(accum):
            for r in range(world):
                got += per_rank[r][s * accum + m]
        assert got == want, s
    resumed = list(_RankBatches(n, rank=1, start_step=3, **kw))
    assert resumed == per_rank[1][3 * accum:]


def test_budget_fractions_train_one_model_at_several_budgets(bench, tmp_path):
    # Each batch runs at a budget drawn from train.budget_fractions (of N = 64 for tiny): the logged per-patch budget
    # mean takes several of those values (one batch per logged step), and resuming replays the same draws.
    out = tmp_path / "run"
    args = ["--config", "configs/train/tiny.yaml", f"output_dir={out}", f"data.path={bench}", "data.generate=false",
            "dist.fsdp=off", "train.max_steps=6", "train.batch_size=2", "train.save_every=3",
            "train.budget_fractions=[0.25, 0.5, 1.0]"]
    rows = main(args)
    means = [float(r["budget_mean"]) for r in _rows(out / "log.csv")]
    assert set(means) <= {16 / 16, 32 / 16, 64 / 16} and len(set(means)) >= 2, means
    rows2 = main(args + ["--resume", str(out / "checkpoints" / "step_00000003")])
    assert [r["loss"] for r in rows2] == pytest.approx([r["loss"] for r in rows[3:]], rel=1e-6)
    assert [float(r["budget_mean"]) for r in _rows(out / "log.csv")] == means
    with pytest.raises(ValueError, match=r"train.budget_fractions: 0.1 of N=64 is 6 tokens"):
        main(args[:-1] + ["train.budget_fractions=[0.1]", f"output_dir={tmp_path / 'bad'}"])
    with pytest.raises(ValueError, match="train.budget_fractions must be null or a non-empty list"):
        main(args[:-1] + ["train.budget_fractions=[1.5]", f"output_dir={tmp_path / 'bad2'}"])


def test_init_from_starts_a_new_run_from_trained_weights(bench, tmp_path):
    # train.init_from loads another run's weights (checkpoint, run folder or exported folder) before training; the
    # recipe's model then holds exactly those weights at step 0, where its own seed would have initialised others.
    from safetensors.torch import load_file, save_file

    from models.builders import dataclass_to_dict
    from models.pretrained import save_pretrained
    from training.train import load_train_cfg

    common = [f"data.path={bench}", "data.generate=false", "dist.fsdp=off", "train.batch_size=2"]
    src = tmp_path / "src"
    main(["--config", "configs/train/tiny.yaml", *common, f"output_dir={src}", "train.max_steps=2"])
    trained = load_file(src / "checkpoints" / "step_00000002" / "model.safetensors")

    def setup(init_from, name):
        cfg = load_train_cfg("configs/train/tiny.yaml", [*common, f"output_dir={tmp_path / name}", "train.seed=1",
                                                         f"train.init_from={init_from}"])
        recipe = TrainRecipe(cfg)
        recipe.setup()
        return recipe

    for i, init_from in enumerate((src, src / "checkpoints" / "step_00000002")):
        state = setup(init_from, f"ft{i}").model.state_dict()
        assert set(trained) <= set(state)
        assert all(torch.equal(state[k], v) for k, v in trained.items())
    torch.manual_seed(1)
    fresh, _ = build_model("tiny")
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in trained.items())

    # An exported bf16 folder: the float32 model holds the bf16 values.
    recipe = setup(src, "ft_export_src")
    save_pretrained(recipe.model, recipe.processor, dataclass_to_dict(recipe.model_cfg), tmp_path / "export",
                    dtype="bfloat16")
    exported = load_file(tmp_path / "export" / "model.safetensors")
    state = setup(tmp_path / "export", "ft_export").model.state_dict()
    assert all(torch.equal(state[k], v.float()) for k, v in exported.items())
    # ... and fine-tuning from it trains from step 1 with a fresh schedule.
    rows = main(["--config", "configs/train/tiny.yaml", *common, f"output_dir={tmp_path / 'ft_run'}",
                 "train.max_steps=2", f"train.init_from={tmp_path / 'export'}"])
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)

    # Bad sources are named.
    with pytest.raises(ValueError, match="holds no model.safetensors"):
        setup(tmp_path / "nowhere", "bad0")
    key = next(k for k, v in trained.items() if v.dim() == 2)
    (tmp_path / "misshaped").mkdir()
    save_file({**trained, key: torch.zeros(3, 5)}, tmp_path / "misshaped" / "model.safetensors")
    with pytest.raises(ValueError, match=rf"do not fit the model.*{key}"):
        setup(tmp_path / "misshaped", "bad1")
    (tmp_path / "partial").mkdir()
    save_file({k: v for k, v in trained.items() if k != key}, tmp_path / "partial" / "model.safetensors")
    with pytest.raises(ValueError, match=rf"missing \['{key}'\]"):
        setup(tmp_path / "partial", "bad2")
    with pytest.raises(ValueError, match="train.init_from must be a path"):
        load_train_cfg("configs/train/tiny.yaml", ["train.init_from=3"])

    # Another allocator (a bandit) from the projection run's weights: everything but the allocator's own state comes
    # from them; the bandit's statistics keep their fresh values. Without the skip its keys are missing.
    bandit = ["model.arr_coc.allocator=bandit", 'model.arr_coc.allocator_kwargs={"levels": [1, 2, 4, 6]}']
    cfg = load_train_cfg("configs/train/tiny.yaml", [*common, f"output_dir={tmp_path / 'ft_bandit'}", "train.seed=1",
                                                     f"train.init_from={src}", *bandit,
                                                     'train.init_from_skip=["arr_coc.attending."]'])
    recipe = TrainRecipe(cfg)
    recipe.setup()
    state = recipe.model.state_dict()
    att = [k for k in state if k.startswith("arr_coc.attending.")]
    assert att and all(k not in trained for k in att)  # the bandit's statistics: not in the projection's weights
    assert all(torch.equal(state[k], v) for k, v in trained.items())
    assert torch.count_nonzero(state["arr_coc.attending.policy.counts"]) == 0  # fresh: nothing learnt yet
    with pytest.raises(ValueError, match=r"missing \['arr_coc.attending"):
        setup_cfg = load_train_cfg("configs/train/tiny.yaml", [*common, f"output_dir={tmp_path / 'bad3'}",
                                                               f"train.init_from={src}", *bandit])
        TrainRecipe(setup_cfg).setup()
    with pytest.raises(ValueError, match=r"init skip prefixes \['arr_coc.atending.'\] match no key"):
        setup_cfg = load_train_cfg("configs/train/tiny.yaml", [*common, f"output_dir={tmp_path / 'bad4'}",
                                                               f"train.init_from={src}", *bandit,
                                                               'train.init_from_skip=["arr_coc.atending."]'])
        TrainRecipe(setup_cfg).setup()
    with pytest.raises(ValueError, match="needs train.init_from"):
        load_train_cfg("configs/train/tiny.yaml", ['train.init_from_skip=["arr_coc."]'])
    with pytest.raises(ValueError, match="init_from_skip must be null or a non-empty list"):
        load_train_cfg("configs/train/tiny.yaml", [f"train.init_from={src}", "train.init_from_skip=[]"])


def test_thompson_bandit_run_resumes_exactly(bench, tmp_path):
    """The TS bandit draws from the global CPU generator; the loader must not shift it on resume (it did)."""
    out = tmp_path / "ts"
    args = ["--config", "configs/train/tiny.yaml", f"output_dir={out}", f"data.path={bench}", "data.generate=false",
            "dist.fsdp=off", "train.max_steps=4", "train.batch_size=4", "train.save_every=2", "train.keep_last=9",
            "model.arr_coc.allocator=bandit",
            'model.arr_coc.allocator_kwargs={"levels": [1, 2, 4, 6], "policy": "ts"}']
    full = main(args)
    resumed = main(args + ["--resume", str(out / "checkpoints" / "step_00000002")])
    assert [r["step"] for r in resumed] == [3, 4]
    for a, b in zip(full[2:], resumed):
        assert a["loss"] == b["loss"] and a["budget_gini"] == b["budget_gini"]


def test_pruning_never_deletes_the_checkpoint_just_written(bench, tmp_path):
    """A second run in the same output_dir with fewer steps: its checkpoint must survive keep_last."""
    out = tmp_path / "prune"
    base = ["--config", "configs/train/tiny.yaml", f"output_dir={out}", f"data.path={bench}", "data.generate=false",
            "dist.fsdp=off", "train.batch_size=4"]
    main(base + ["train.max_steps=4", "train.save_every=2", "train.keep_last=2"])
    main(base + ["train.max_steps=3", "train.keep_last=1", "train.seed=7"])
    names = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert "step_00000003" in names and "step_00000004" in names  # the other trajectory's is left alone
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    from training.checkpoint import find_latest

    assert find_latest(out / "checkpoints").name == "step_00000003"


@pytest.mark.parametrize("override", ["optim.grad_clip=-1", "optim.min_lr_ratio=-0.5", "optim.min_lr_ratio=1.5",
                                      "optim.warmup_steps=-2", "train.save_every=-3", "train.keep_last=0",
                                      "train.seed=-1", "optim.lr=0"])
def test_bad_optimisation_settings_are_refused_by_name(override):
    from training.train import load_train_cfg

    key, value = override.split("=")
    with pytest.raises(ValueError, match=f"{key}.*{value}"):
        load_train_cfg("configs/train/tiny.yaml", [override])


@pytest.mark.parametrize("override,match", [("optim.arr_coc_lr=-1", r"optim\.arr_coc_lr.*-1"),
                                            ("optim.betas=[0.9]", r"optim\.betas.*\[0\.9\]"),
                                            ("optim.betas=[0.9, 1.5]", r"optim\.betas"),
                                            ("optim.eps=-1", r"optim\.eps.*-1")])
def test_bad_adam_settings_are_refused_by_name(override, match):
    """A negative ArrCoc learning rate ran gradient ascent on ArrCoc (AdamW checks only its default lr, not a group's);
    one beta failed with an IndexError in the optimizer."""
    from training.train import load_train_cfg

    with pytest.raises(ValueError, match=match):
        load_train_cfg("configs/train/tiny.yaml", [override])


def test_resume_takes_overrides_after_it():
    """`--resume key=value ...` (the configs' documented `[--resume] [key=value ...]`): the overrides are overrides,
    not a checkpoint path (it read the first as the path and refused the rest)."""
    from training.train import _parse_args

    args = _parse_args(["--config", "c.yaml", "a=1", "--resume", "train.max_steps=5", "train.seed=1"])
    assert args.resume is True and args.overrides == ["a=1", "train.max_steps=5", "train.seed=1"]
    args = _parse_args(["--config", "c.yaml", "--resume", "output_dir=/tmp/x"])
    assert args.resume is True and args.overrides == ["output_dir=/tmp/x"]
    args = _parse_args(["--config", "c.yaml", "a=1", "--resume", "ckpt/step_00000002", "b=2"])
    assert args.resume == "ckpt/step_00000002" and args.overrides == ["a=1", "b=2"]
    assert _parse_args(["--config", "c.yaml", "--resume"]).resume is True
    with pytest.raises(SystemExit):
        _parse_args(["--config", "c.yaml", "--resume", "a=1", "--bogus"])


def test_resume_refuses_other_trajectory_settings(bench, tmp_path):
    out = tmp_path / "cfg"
    args = ["--config", "configs/train/tiny.yaml", f"output_dir={out}", f"data.path={bench}", "data.generate=false",
            "dist.fsdp=off", "train.max_steps=2", "train.batch_size=4"]
    main(args)
    with pytest.raises(ValueError, match=r"train.batch_size: 4 -> 2"):
        main(args + ["train.batch_size=2", "--resume"])
    with pytest.raises(ValueError, match=r"train.seed: 0 -> 3"):
        main(args + ["train.seed=3", "--resume"])
    rows = main(args[:-2] + ["train.max_steps=3", "train.batch_size=4", "--resume"])  # more steps: allowed
    assert [r["step"] for r in rows] == [3]


def test_resume_names_an_architecture_change_before_loading(bench, tmp_path):
    """Another model shape (or allocator) on --resume is refused by name, not by DCP's load failing on the tensors
    (a CheckpointException about sizes or missing keys, raised before the settings were compared)."""
    out = tmp_path / "arch"
    args = ["--config", "configs/train/tiny.yaml", f"output_dir={out}", f"data.path={bench}", "data.generate=false",
            "dist.fsdp=off", "train.max_steps=1", "train.batch_size=4"]
    main(args)
    with pytest.raises(ValueError, match=r"model: \{\} -> \{'llm': \{'text_config': \{'hidden_size': 48\}\}\}"):
        main(args + ["model.llm.text_config.hidden_size=48", "--resume"])
    with pytest.raises(ValueError, match=r"model: \{\} -> \{'arr_coc': \{'allocator': 'bandit'"):
        main(args + ["model.arr_coc.allocator=bandit", 'model.arr_coc.allocator_kwargs={"levels": [1, 2, 4, 6]}',
                     "--resume", str(out / "checkpoints" / "step_00000001")])


@pytest.mark.parametrize("first,then", [
    (["optim.arr_coc_lr=1e-3"], ["optim.lr=1e-5"]),  # still two groups: the old lr was kept silently
    ([], ["optim.lr=1e-5"]),  # one group (equal lrs) split in two
    (["optim.arr_coc_lr=1e-3"], ["optim.lr=1e-5", "optim.arr_coc_lr=1e-5"]),  # two groups merged into one
    (["optim.arr_coc_lr=1e-3"], ["optim.lr=1e-5", "optim.weight_decay=0.1", "optim.schedule=cosine"]),  # two -> three
])
def test_resume_applies_the_new_optimiser_settings(bench, tmp_path, first, then):
    """optim may change on --resume: the new learning rates and decay are used (a same-shaped change was ignored,
    the checkpoint's own values kept; one that split or merged the param groups failed with KeyError 'betas' or an
    IndexError in the scheduler). The Adam moments still continue from the checkpoint."""
    from training.train import load_train_cfg

    common = ["--config", "configs/train/tiny.yaml", f"output_dir={tmp_path / 'run'}", f"data.path={bench}",
              "data.generate=false", "dist.fsdp=off", "train.batch_size=4"]
    main(common + first + ["train.max_steps=2"])
    cfg = load_train_cfg(common[1], common[2:] + then + ["train.max_steps=4"])
    recipe = TrainRecipe(cfg, resume=True)
    recipe.setup()
    assert recipe.step == 2
    scale = recipe._lr_lambda(2)
    arr = {id(p) for p in recipe.model.arr_coc.parameters()}
    for g in recipe.optimizer.param_groups:
        want = cfg.optim.arr_coc_lr if id(g["params"][0]) in arr else cfg.optim.lr
        assert g["lr"] == want * scale and g["initial_lr"] == want
        assert g["weight_decay"] in (0.0, cfg.optim.weight_decay) and tuple(g["betas"]) == tuple(cfg.optim.betas)
    assert any(recipe.optimizer.state[p] for g in recipe.optimizer.param_groups for p in g["params"])  # moments
    rows = recipe.train()
    recipe.cleanup()
    assert [r["step"] for r in rows] == [3, 4] and all(math.isfinite(r["loss"]) for r in rows)


def test_half_precision_model_trains_float32_masters(bench, tmp_path):
    """llm.dtype=bfloat16 with bf16 mixed precision (the llava15_7b preset's recipe): AdamW must step float32
    masters, or updates below a bf16 ulp vanish; frozen parameters stay bf16."""
    from training.train import load_train_cfg

    cfg = load_train_cfg("configs/train/tiny.yaml", [f"output_dir={tmp_path / 'bf'}", f"data.path={bench}",
                                                     "data.generate=false", "dist.fsdp=off", "train.max_steps=2",
                                                     "train.batch_size=4", "model.llm.dtype=bfloat16",
                                                     "dist.mixed_precision=bf16", "model.vision_trainable=false"])
    recipe = TrainRecipe(cfg)
    try:
        recipe.setup()
        assert str(recipe.model_cfg.llm.dtype) in ("bfloat16", "torch.bfloat16")  # built in bf16
        params = dict(recipe.model.named_parameters())
        trainable = [n for n, p in params.items() if p.requires_grad]
        assert any("language_model" in n for n in trainable)
        assert all(params[n].dtype == torch.float32 for n in trainable)
        rows = recipe.train()
        assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    finally:
        recipe.cleanup()


def test_logged_lr_is_optim_lr_as_scheduled(bench, tmp_path):
    # With arr_coc_lr below lr, param group 0 is ArrCoc's: the log showed its rate, not optim.lr's.
    rows = main(["--config", "configs/train/tiny.yaml", f"output_dir={tmp_path / 'run'}", f"data.path={bench}",
                 "data.generate=false", "dist.fsdp=off", "train.max_steps=2", "train.batch_size=4",
                 "optim.lr=1e-3", "optim.arr_coc_lr=1e-5", "optim.warmup_steps=0", "optim.schedule=constant"])
    assert [r["lr"] for r in rows] == [1e-3, 1e-3]


def _linear_and_adam(seed: int, steps: int = 1, lr: float = 0.1):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_checkpoint_pruning_and_find_latest_by_hand(tmp_path):
    """keep_last keeps exactly the newest of this trajectory; find_latest follows `latest` only to a complete
    checkpoint, else takes the highest-numbered complete one; a stale .tmp folder is replaced, never kept."""
    from training.checkpoint import find_latest, save_checkpoint

    model, opt = _linear_and_adam(0)
    root = tmp_path / "ckpt"
    assert find_latest(root) is None
    (root / ".step_00000002.tmp" / "rng").mkdir(parents=True)  # a crash mid-write left this behind
    (root / ".step_00000002.tmp" / "stale.txt").write_text("x")

    def save(step, keep_last):
        return save_checkpoint(root, step, model=model, optimizer=opt, scheduler=None,
                               trainer_state={"step": step}, keep_last=keep_last)

    def names():
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    save(1, 2)
    assert not (save(2, 2) / "stale.txt").exists() and names() == ["step_00000001", "step_00000002"]
    save(3, 2)
    save(4, 2)
    assert names() == ["step_00000003", "step_00000004"]
    assert find_latest(root).name == "step_00000004"
    (root / "latest").write_text("step_00000009\n")  # points at nothing complete: the newest complete one counts
    (root / "step_00000007").mkdir()  # incomplete (no trainer_state.json): never counts
    (root / ".step_00000008.tmp").mkdir()
    (root / ".step_00000008.tmp" / "trainer_state.json").write_text("{}")
    assert find_latest(root).name == "step_00000004"
    (root / "latest").unlink()
    assert find_latest(root).name == "step_00000004"
    save(5, 1)  # keep_last=1: only the one just written of this trajectory (the higher step_00000007 is left alone)
    assert names() == ["step_00000005", "step_00000007"]
    assert find_latest(root).name == "step_00000005"


def test_load_checkpoint_restores_weights_moments_and_rng(tmp_path):
    import random

    import numpy as np

    from training.checkpoint import load_checkpoint, save_checkpoint

    model, opt = _linear_and_adam(0)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=None,
                           trainer_state={"step": 1, "note": "x"})
    want_draws = (random.random(), float(np.random.rand()), float(torch.rand(())))
    want_w = {k: v.clone() for k, v in model.state_dict().items()}
    want_m = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]

    model2, opt2 = _linear_and_adam(5, steps=3, lr=0.5)  # another trajectory entirely
    state = load_checkpoint(path, model=model2, optimizer=opt2)
    assert state == {"step": 1, "note": "x"}
    assert all(torch.equal(model2.state_dict()[k], v) for k, v in want_w.items())
    assert all(torch.equal(opt2.state[p]["exp_avg"], m) for p, m in zip(model2.parameters(), want_m))
    assert all(float(opt2.state[p]["step"]) == 1 for p in model2.parameters())
    assert opt2.param_groups[0]["lr"] == 0.1  # the optimizer's whole state dict, its param groups too
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == want_draws

    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "trainer_state.json").write_text("{}")  # no dcp/: a copy cut short
    with pytest.raises(ValueError, match="is not a complete checkpoint"):
        load_checkpoint(tmp_path / "partial", model=model2, optimizer=opt2)


def test_load_model_weights_skip_ignores_the_files_keys_under_it(tmp_path):
    from safetensors.torch import save_file

    from training.checkpoint import load_model_weights, resolve_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    # The file's "1." keys are another layer entirely (another shape, an extra key): with skip=("1.",) unread.
    weights = {"0.weight": torch.ones(2, 2), "0.bias": torch.full((2,), 2.0), "1.weight": torch.zeros(3, 3),
               "1.extra": torch.zeros(1)}
    (tmp_path / "w").mkdir()
    save_file(weights, tmp_path / "w" / "model.safetensors")
    assert load_model_weights(model, tmp_path / "w", skip=("1.",)) == tmp_path / "w" / "model.safetensors"
    got = model.state_dict()
    assert torch.equal(got["0.weight"], weights["0.weight"]) and torch.equal(got["0.bias"], weights["0.bias"])
    assert torch.equal(got["1.weight"], fresh["1.weight"]) and torch.equal(got["1.bias"], fresh["1.bias"])

    # A run whose latest checkpoint has no model.safetensors holds no weights: refused by name, not returned.
    (tmp_path / "run" / "checkpoints" / "step_00000001").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step_00000001" / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match="holds no model.safetensors"):
        resolve_checkpoint(tmp_path / "run")


def test_save_removes_stale_tmp_folders_of_any_step(tmp_path):
    """The module's promise: a crash mid-write leaves a .tmp folder that the next save removes, whichever step it
    was for (only a save of that same step removed it: a resumed run that saved other steps kept it, a full copy of
    the model, forever)."""
    from training.checkpoint import save_checkpoint

    model, opt = _linear_and_adam(0)
    (tmp_path / ".step_00000008.tmp" / "dcp").mkdir(parents=True)
    save_checkpoint(tmp_path, 5, model=model, optimizer=opt, scheduler=None, trainer_state={"step": 5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000005"]


def test_a_kill_while_deleting_a_checkpoint_leaves_none_that_looks_complete(tmp_path, monkeypatch):
    """Replacing a checkpoint of the same step (a resume from an older one) removed it in place: killed mid-delete,
    its folder kept trainer_state.json without its shards, and `latest` still named it. Now every step folder a
    search can find is complete, whether the kill comes while replacing or while pruning with keep_last."""
    import shutil

    from training import checkpoint
    from training.checkpoint import find_latest, load_checkpoint, save_checkpoint

    model, opt = _linear_and_adam(0)
    root = tmp_path / "ckpt"
    rmtree = shutil.rmtree

    def save(step, keep_last=None):
        return save_checkpoint(root, step, model=model, optimizer=opt, scheduler=None,
                               trainer_state={"step": step}, keep_last=keep_last)

    def killed_midway(path, *args, **kwargs):  # deletes a checkpoint's shards first, then the process dies
        if not (Path(path) / "dcp").is_dir():  # a crashed write's leftovers: removed as usual
            return rmtree(path, *args, **kwargs)
        rmtree(Path(path) / "dcp")
        raise KeyboardInterrupt

    for step in (1, 2):
        save(step)
    for step, keep_last in ((2, None), (3, 1)):  # replacing step 2; writing step 3 and pruning 1 and 2
        monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_midway)
        with pytest.raises(KeyboardInterrupt):
            save(step, keep_last)
        monkeypatch.undo()
        for folder in root.glob("step_*"):
            assert (folder / "dcp").is_dir(), folder
        load_checkpoint(find_latest(root), model=model, optimizer=opt)
        assert find_latest(root).name == f"step_{step:08d}"
    save(4)  # the next save removes what the kills left
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []


def test_lr_schedule_by_hand():
    """Linear warmup to the peak over warmup_steps, then cosine from the peak to min_lr_ratio at max_steps."""
    from training.train import load_train_cfg

    cfg = load_train_cfg("configs/train/tiny.yaml", ["optim.warmup_steps=2", "optim.schedule=cosine",
                                                     "optim.min_lr_ratio=0.2", "train.max_steps=6"])
    lam = TrainRecipe(cfg)._lr_lambda
    # steps 0, 1: warmup 1/2, 2/2; steps 2..6: progress (s - 2) / 4 -> 0.2 + 0.8 * (1 + cos(pi p)) / 2.
    assert [lam(s) for s in range(7)] == pytest.approx([0.5, 1.0, 1.0, 0.2 + 0.4 * (1 + math.sqrt(0.5)), 0.6,
                                                        0.2 + 0.4 * (1 - math.sqrt(0.5)), 0.2])
    assert lam(9) == pytest.approx(0.2)  # past max_steps (a resume with fewer steps): the floor, not back up
    cfg.optim.schedule = "constant"
    assert [lam(s) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_param_groups_decay_only_matrices_outside_arr_coc():
    from training.train import load_train_cfg

    cfg = load_train_cfg("configs/train/tiny.yaml", ["optim.weight_decay=0.1", "optim.lr=1e-4",
                                                     "optim.arr_coc_lr=1e-3"])
    recipe = TrainRecipe(cfg)
    recipe.device = torch.device("cpu")
    torch.manual_seed(0)
    recipe.model, _ = build_model("tiny")
    opt = recipe._optimizer()
    arr = {id(p) for p in recipe.model.arr_coc.parameters()}
    hyper = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    trainable = [p for p in recipe.model.parameters() if p.requires_grad]
    assert len(hyper) == len(trainable)
    assert any(p.dim() >= 2 for p in recipe.model.arr_coc.parameters())  # else the arr_coc check below is vacuous
    for p in trainable:
        if id(p) in arr:
            assert hyper[id(p)] == (1e-3, 0.0)
        else:
            assert hyper[id(p)] == (1e-4, 0.1 if p.dim() >= 2 else 0.0)


@pytest.mark.parametrize("override,match", [
    ("optim.grad_clip=0", r"optim\.grad_clip.*got 0"),  # 0 switched clipping off silently
    ("optim.betas=[0.9, 1.0]", r"optim\.betas"),
    ("train.seed=4294967296", r"train\.seed.*4294967296"),
    ("optim.lr=Infinity", r"optim\.lr.*got inf"),
    ("optim.weight_decay=-0.1", r"optim\.weight_decay.*-0\.1"),
    ("train.budget_fractions=[0]", r"train\.budget_fractions.*\[0\]"),
    ("train.relevance_layer=0", r"train\.relevance_layer.*got 0"),
    ("train.max_steps=0", r"train\.max_steps.*got 0"),
])
def test_boundary_settings_are_refused_by_name(override, match):
    from training.train import load_train_cfg

    with pytest.raises(ValueError, match=match):
        load_train_cfg("configs/train/tiny.yaml", [override])


@pytest.mark.parametrize("override,match", [
    ("train.bandit_feedback=flase", r"train\.bandit_feedback must be true or false, got 'flase'"),  # was truthy: on
    ("dist.activation_checkpointing=3", r"dist\.activation_checkpointing.*got 3"),
    ("dist.reshard_after_forward=x", r"dist\.reshard_after_forward.*got 'x'"),
    ("data.generate=yes please", r"data\.generate.*got 'yes please'"),
    ("data.max_length=-1", r"data\.max_length must be a positive integer or null, got -1"),  # failed at a batch
    ("data.max_length=0", r"data\.max_length.*got 0"),
    ("data.max_length=1.5", r"data\.max_length.*got 1\.5"),
    ("data.num_workers=1.5", r"data\.num_workers.*got 1\.5"),  # a TypeError in the DataLoader
    ("data.num_workers=-1", r"data\.num_workers.*got -1"),
    ("data.max_samples=0", r"data\.max_samples.*got 0"),
    ("data.generate_seed=x", r"data\.generate_seed.*got 'x'"),
    ("train.hang_after_step=0", r"train\.hang_after_step.*got 0"),
    ("output_dir=null", r"output_dir must be a non-empty string, got None"),  # a TypeError in Path()
    ("dist.backend=3", r"dist\.backend.*got 3"),
    ("model=3", r"model must be a mapping, got 3"),  # an AttributeError in the merge
    ("data.keep_columns=3", r"data\.keep_columns.*got 3"),
    ("train.batch_size=6;train.grad_accum=4", r"train\.batch_size=6 is not divisible by train\.grad_accum=4"),
])
def test_every_remaining_key_is_checked_by_name(override, match):
    """Every key is refused by name when malformed, at load time: a truthy string switched a flag on, and other
    values failed only later (at setup or the first batch) without the key's name, or not at all."""
    from training.train import load_train_cfg

    with pytest.raises(ValueError, match=match):
        load_train_cfg("configs/train/tiny.yaml", override.split(";"))


def test_boundary_settings_inside_the_ranges_are_accepted():
    from training.train import load_train_cfg

    cfg = load_train_cfg("configs/train/tiny.yaml", ["optim.min_lr_ratio=0", "train.seed=4294967295",
                                                     "optim.betas=[0, 0.999]", "optim.grad_clip=null",
                                                     "optim.weight_decay=0", "train.budget_fractions=[1]",
                                                     "train.relevance_layer=1"])
    assert (cfg.optim.min_lr_ratio, cfg.train.seed, cfg.optim.betas, cfg.optim.grad_clip) == (0, 2**32 - 1, [0, 0.999],
                                                                                             None)
    assert (cfg.optim.weight_decay, cfg.train.budget_fractions, cfg.train.relevance_layer) == (0, [1], 1)
    assert load_train_cfg("configs/train/tiny.yaml", ["optim.min_lr_ratio=1"]).optim.min_lr_ratio == 1


def test_too_few_rows_for_one_batch_and_gini_of_zeros():
    from training.train import _RankBatches

    with pytest.raises(ValueError, match="the dataset has 3 rows, fewer than one global batch \\(4\\)"):
        _RankBatches(3, seed=0, global_batch=4, world=1, rank=0, accum=1, start_step=0, max_steps=1)
    torch.testing.assert_close(gini(torch.zeros(2, 4)), torch.zeros(2, dtype=torch.float64))  # no 0/0


def test_every_trajectory_setting_is_compared_on_resume(tmp_path):
    import copy

    from models.builders import dataclass_to_dict
    from training.train import _check_resume_config, load_train_cfg

    cfg = load_train_cfg("configs/train/tiny.yaml")
    saved = dataclass_to_dict(cfg)
    changes = {"model_preset": "bench", "model": {"arr_coc": {"budget": 8}}, "train.seed": 5, "train.batch_size": 4,
               "train.grad_accum": 2, "train.budget_fractions": [0.5], "train.grounding_weight": 1.0,
               "train.relevance_weight": 1.0, "train.relevance_layer": 1, "train.saliency_weight": 1.0,
               "data.source": "vqav2", "data.split": "val", "data.max_samples": 3,
               # A bandit's statistics learn or not, and another column is the answer: other runs too (not compared).
               "train.bandit_feedback": False, "data.columns": {"answers": "label"}}
    for key, value in changes.items():
        other = copy.deepcopy(saved)
        *parents, last = key.split(".")
        d = other
        for part in parents:
            d = d[part]
        d[last] = value
        with pytest.raises(ValueError, match=rf"{key}: "):
            _check_resume_config(other, cfg, tmp_path)
    other = copy.deepcopy(saved)
    other["train"]["max_steps"], other["optim"]["lr"], other["train"]["keep_last"] = 99, 0.5, 1
    _check_resume_config(other, cfg, tmp_path)  # max_steps, optim, checkpointing may change
    # A checkpoint written before train.saliency_weight existed was trained without it: it resumes with 0, not 0.5.
    older = copy.deepcopy(saved)
    del older["train"]["saliency_weight"]
    _check_resume_config(older, cfg, tmp_path)
    with pytest.raises(ValueError, match=r"train.saliency_weight: 0.0 -> 0.5"):
        _check_resume_config(older, load_train_cfg("configs/train/tiny.yaml", ["train.saliency_weight=0.5"]), tmp_path)
    del older["data"]["columns"]  # nor before data.columns: trained on the source's own column names
    _check_resume_config(older, cfg, tmp_path)
