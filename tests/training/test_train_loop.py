"""The training recipe's pieces by hand: logged statistics, one micro-step, the sampler's shapes, process-group setup,
optimizer groups, precision, clipping, replicated-gradient averaging, bandit gathering and the wall-clock budget."""

from __future__ import annotations

import csv
import itertools
import json
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import training.train as train_mod
from models.builders import build_model
from training.collate import move_to
from training.train import TrainRecipe, _RankBatches, gini, load_train_cfg, main, model_cfg

TINY = "configs/train/tiny.yaml"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark

    path = tmp_path_factory.mktemp("bench") / "mini"
    make_benchmark(path, seed=0, sizes={"train": 16, "val": 4}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    return path


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher variables; the ones a private process group writes are restored afterwards."""
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_MIXED_PRECISION",
              "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _bare_recipe(**train) -> TrainRecipe:
    recipe = TrainRecipe.__new__(TrainRecipe)
    recipe.cfg = SimpleNamespace(train=SimpleNamespace(**train), optim=SimpleNamespace(grad_clip=1.0))
    recipe.device, recipe.world, recipe.rank, recipe.fsdp = torch.device("cpu"), 1, 0, False
    recipe.amp_dtype, recipe.relevance_layer, recipe.replicated = None, None, []
    return recipe


def test_logged_statistics_match_a_hand_computation(bench, tmp_path, clean_env):
    """Step 1's loss is the token-summed cross-entropy of both micro-batches over their answer tokens, its tokens the
    attention mask's sum, its budget statistics the allocator's; lr follows the schedule, epochs the sampler, the log
    keeps every log_every-th step and the last, and the checkpoint records its data position."""
    out = tmp_path / "run"
    cfg = load_train_cfg(TINY, [f"output_dir={out}", f"data.path={bench}", "data.generate=false", "dist.fsdp=off",
                                "train.max_steps=3", "train.batch_size=8", "train.grad_accum=2", "train.log_every=2",
                                "optim.warmup_steps=2", "optim.schedule=cosine", "optim.min_lr_ratio=0.2"])
    recipe = TrainRecipe(cfg)
    try:
        recipe.setup()
        recipe.model.train()
        loader = iter(recipe._loader())
        micro = [move_to(next(loader), recipe.device, recipe.processor) for _ in range(2)]
        ce, n, budgets = 0.0, 0, []
        with torch.no_grad():
            for b in micro:
                o = recipe.model(b["pixel_values"], b["input_ids"], b["attention_mask"],
                                 query_input_ids=b["query_input_ids"], query_attention_mask=b["query_attention_mask"])
                target = b["labels"][:, 1:]
                ce += float(F.cross_entropy(o.logits[:, :-1].float().flatten(0, 1), target.flatten(),
                                            ignore_index=-100, reduction="sum"))
                n += int((target != -100).sum())
                budgets.append(o.arr_coc.budgets.float())
        tokens = sum(float(b["attention_mask"].sum()) for b in micro)
        assert any(bool((b["attention_mask"] == 0).any()) for b in micro)  # padded: tokens is not rows x length
        budgets = torch.cat(budgets)
        rows = recipe.train()
        lrs = [g["lr"] / g["initial_lr"] for g in recipe.optimizer.param_groups]
    finally:
        recipe.cleanup()
    first = rows[0]
    assert first["loss"] == pytest.approx(ce / n, rel=1e-5)
    assert first["tokens_per_s"] * first["step_time_s"] == pytest.approx(tokens, rel=1e-6)
    assert first["samples_per_s"] * first["step_time_s"] == pytest.approx(8, rel=1e-6)
    assert first["budget_mean"] == pytest.approx(float(budgets.mean()), rel=1e-6)
    g = float(gini(budgets).mean())
    assert g > 0 and first["budget_gini"] == pytest.approx(g, rel=1e-6)
    assert all(r["relevance_loss"] == 0 and r["grounding_loss"] == 0 for r in rows)  # both off
    lam = recipe._lr_lambda
    assert [r["lr"] for r in rows] == pytest.approx([3e-3 * lam(s) for s in range(3)]) and lam(0) == 0.5
    assert lrs == pytest.approx([lam(3)] * len(lrs)) and lam(3) == pytest.approx(0.2)  # the optimizer's own rates
    assert [r["epoch"] for r in rows] == [0, 0, 1]  # 16 rows, 8 a step: two steps an epoch
    with open(out / "log.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [2, 3]
    state = json.loads((out / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["rows_seen"], state["world_size"], state["seed"]) == (3, 1, 24, 1, 0)


def test_micro_step_sums_token_losses_and_scores_exact_matches():
    """One micro-batch of a stand-in model: the loss is summed over answer tokens (position t predicts t + 1), its
    gradient scaled by world / global tokens, and a row is correct only when every answer token is."""
    labels = torch.tensor([[-100, 2, 3, -100], [-100, -100, 1, 4], [-100, 0, 0, 0]])
    pred = torch.tensor([[2, 3, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0]])  # row 0 right; row 1 half right; row 2 wrong
    torch.manual_seed(0)
    logits0 = 4 * F.one_hot(pred, 5).float() + 0.1 * torch.randn(3, 4, 5)
    rewards = []

    class Bandit:
        registry_name = "bandit"

        def update(self, r):
            rewards.append(r.tolist())

    class Stand(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(logits0.clone())
            self.arr_coc = SimpleNamespace(attending=Bandit())

        def forward(self, *args, **kwargs):
            budgets = torch.tensor([[1, 3], [2, 2], [4, 4]])
            return SimpleNamespace(logits=self.logits, arr_coc=SimpleNamespace(budgets=budgets), alloc_context=None)

    recipe = _bare_recipe(bandit_feedback=True, relevance_weight=0.0, grounding_weight=0.0, saliency_weight=0.0,
                          batch_size=6)
    recipe.world, recipe.model = 2, Stand()
    batch = {"labels": labels, "input_ids": torch.zeros(3, 4, dtype=torch.long), "pixel_values": None,
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]),
             "query_input_ids": None, "query_attention_mask": None}
    s = recipe._micro_step(batch, 14.0)

    ref = logits0.clone().requires_grad_()
    want = F.cross_entropy(ref[:, :-1].reshape(-1, 5), labels[:, 1:].reshape(-1), reduction="sum")
    (want * 2 / 14).backward()
    assert float(s["loss_sum"]) == pytest.approx(float(want.detach()), rel=1e-6)
    torch.testing.assert_close(recipe.model.logits.grad, ref.grad)
    assert rewards == [[1.0, 0.0, 0.0]] and float(s["correct"]) == 1 and float(s["rows"]) == 3
    assert float(s["tokens"]) == 11
    assert float(s["budget_sum"]) == 8  # per-row budget means 2 + 2 + 4
    assert float(s["gini_sum"]) == pytest.approx(float(gini(torch.tensor([[1.0, 3], [2, 2], [4, 4]])).sum()))
    assert float(s["gini_sum"]) > 0
    assert float(s["relevance_sum"]) == 0 and float(s["grounding_sum"]) == 0 and float(s["saliency_sum"]) == 0


def test_auxiliary_losses_are_exact_under_gradient_accumulation(bench, tmp_path, clean_env):
    """grad_accum=2 optimises what grad_accum=1 does, relevance and saliency distillation and grounding included: the same
    logged losses and the same (pre-clip) gradient norm."""
    common = ["--config", TINY, f"data.path={bench}", "data.generate=false", "dist.fsdp=off", "train.max_steps=2",
              "train.batch_size=4", "train.relevance_weight=1.0", "train.grounding_weight=1.0",
              "train.saliency_weight=1.0"]
    one = main(common + [f"output_dir={tmp_path / 'one'}"])
    two = main(common + [f"output_dir={tmp_path / 'two'}", "train.grad_accum=2"])
    for key in ("loss", "relevance_loss", "grounding_loss", "saliency_loss", "grad_norm"):
        assert one[1][key] > 0, key  # (step 1's rows have no box: its grounding loss is 0)
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-5), key


def test_rank_batches_micro_batch_size_and_divisibility():
    rows = _RankBatches(8, seed=1, global_batch=4, world=1, rank=0, accum=2, start_step=0, max_steps=2)
    got = list(rows)
    assert [len(m) for m in got] == [2, 2, 2, 2] and len(rows) == 4
    assert got[0] + got[1] == rows.step_rows(0).tolist() and got[2] + got[3] == rows.step_rows(1).tolist()
    four = [list(_RankBatches(4, seed=1, global_batch=4, world=4, rank=r, accum=1, start_step=0, max_steps=1))
            for r in range(4)]  # exactly one global batch of rows is enough
    assert [len(m[0]) for m in four] == [1, 1, 1, 1] and sorted(sum((m[0] for m in four), [])) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"train.batch_size=6 is not divisible by world_size x grad_accum = 2 x 2"):
        _RankBatches(12, seed=0, global_batch=6, world=2, rank=0, accum=2, start_step=0, max_steps=1)


def test_setup_distributed_defaults_and_refusals(clean_env):
    def setup_dist(*overrides):
        recipe = TrainRecipe(load_train_cfg(TINY, list(overrides)))
        recipe._setup_distributed()
        return recipe

    r = setup_dist()  # auto everything, one process, no launcher
    assert (r.world, r.rank, r.fsdp, r.mp, r.amp_dtype) == (1, 0, False, "no", None) and not dist.is_initialized()
    if torch.cuda.is_available():
        return  # the rest is about a machine without CUDA
    assert r.device == torch.device("cpu")
    assert setup_dist("dist.mixed_precision=fp32").mp == "no"
    clean_env.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # accelerate's setting, honoured by auto
    assert (setup_dist().mp, setup_dist().amp_dtype) == ("bf16", torch.bfloat16)
    assert setup_dist("dist.mixed_precision=no").amp_dtype is None
    with pytest.raises(ValueError, match="dist.device='cuda' but CUDA is not available"):
        setup_dist("dist.device=cuda")
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="WORLD_SIZE=2 but no MASTER_ADDR"):
        setup_dist()
    clean_env.setattr(dist, "is_initialized", lambda: True)  # as if a launcher had made the group
    with pytest.raises(ValueError, match=r"world size 2 needs dist.fsdp='auto' or 'on'"):
        setup_dist("dist.fsdp=off")


def test_single_process_fsdp_owns_and_tears_down_its_group(bench, tmp_path, clean_env):
    """dist.fsdp=on without a launcher: a private one-rank group that the run destroys, also when setup fails."""
    args = ["--config", TINY, f"data.path={bench}", "data.generate=false", "dist.fsdp=on", "train.max_steps=1",
            "train.batch_size=4"]
    rows = main(args + [f"output_dir={tmp_path / 'run'}"])
    assert not dist.is_initialized()
    assert [r["step"] for r in rows] == [1]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["fsdp"] is True
    assert json.loads((tmp_path / "run" / "sharding" / "rank0.json").read_text())["n_dtensor"] > 0
    with pytest.raises(ValueError, match="train.budget_fractions: 0.1"):
        main(args + [f"output_dir={tmp_path / 'bad'}", "train.budget_fractions=[0.1]"])
    assert not dist.is_initialized()


def test_optimizer_takes_trainable_parameters_and_adam_settings():
    cfg = load_train_cfg(TINY, ["optim.betas=[0.8, 0.95]", "optim.eps=1e-6", "model.vision_trainable=false"])
    recipe = _bare_recipe()
    recipe.cfg = cfg
    torch.manual_seed(0)
    recipe.model, _ = build_model(model_cfg(cfg))
    opt = recipe._optimizer()
    frozen = [p for p in recipe.model.parameters() if not p.requires_grad]
    assert frozen
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in recipe.model.parameters() if p.requires_grad}
    assert all(tuple(g["betas"]) == (0.8, 0.95) and g["eps"] == 1e-6 for g in opt.param_groups)
    for p in recipe.model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        recipe._optimizer()


def test_fp32_masters_only_for_trainable_half_parameters_under_mixed_precision():
    cfg = load_train_cfg(TINY, ["model.llm.dtype=bfloat16", "model.llm_trainable=false"])
    recipe = _bare_recipe()
    recipe.mp = "bf16"

    def built(amp):
        recipe.amp_dtype = amp
        torch.manual_seed(0)
        recipe.model, _ = build_model(model_cfg(cfg))
        half = {n for n, p in recipe.model.named_parameters() if p.dtype == torch.bfloat16}
        recipe._fp32_masters()
        return half, dict(recipe.model.named_parameters())

    half, params = built(torch.bfloat16)
    frozen_half = {n for n in half if not params[n].requires_grad}
    assert frozen_half and all(params[n].dtype == torch.bfloat16 for n in frozen_half)  # frozen: as built
    assert all(p.dtype == torch.float32 for p in params.values() if p.requires_grad)
    cfg.model["llm_trainable"] = True
    half, params = built(None)  # no mixed precision: nothing is converted
    assert any(params[n].requires_grad for n in half) and all(params[n].dtype == torch.bfloat16 for n in half)


def test_autocast_only_without_fsdp_and_with_a_half_dtype():
    recipe = _bare_recipe()
    lin = torch.nn.Linear(2, 2)
    x = torch.randn(1, 2)
    for amp, fsdp, want in ((torch.bfloat16, False, torch.bfloat16), (torch.bfloat16, True, torch.float32),
                            (None, False, torch.float32)):
        recipe.amp_dtype, recipe.fsdp = amp, fsdp
        with recipe._autocast():
            assert lin(x).dtype == want, (amp, fsdp)


def test_relevance_layer_choice_and_range():
    torch.manual_seed(0)
    model, _ = build_model("tiny")
    layers = model.language_model.layers
    assert len(layers) == 2
    recipe = _bare_recipe()
    recipe.model = model
    for weight, k, want in ((0.0, 1, None), (1.0, None, layers[0]), (1.0, 1, layers[0]), (1.0, 2, layers[1])):
        recipe.cfg.train = SimpleNamespace(relevance_weight=weight, relevance_layer=k)
        assert recipe._relevance_layer() is want, (weight, k)
    recipe.cfg.train.relevance_layer = 3
    with pytest.raises(ValueError, match=r"train.relevance_layer=3 must be in 1..2"):
        recipe._relevance_layer()


def test_bandit_feedback_skips_other_allocators_and_gathers_across_ranks(monkeypatch):
    calls = []

    class Recorder:
        def __init__(self, name):
            self.registry_name = name

        def update(self, rewards, **kw):
            calls.append((rewards.tolist(), {k: v.tolist() for k, v in kw.items()}))

    recipe = _bare_recipe(bandit_feedback=True)
    recipe.model = SimpleNamespace(arr_coc=SimpleNamespace(attending=Recorder("learned")))
    recipe._bandit_feedback(torch.tensor([1.0]))  # has an update(), but is not the bandit
    assert calls == []

    def all_gather(parts, t):  # rank r's tensor: this one plus 10 r
        for r, part in enumerate(parts):
            part.copy_(t + 10 * r)

    monkeypatch.setattr(dist, "all_gather", all_gather)
    recipe.world = 2
    recipe.model.arr_coc.attending = Recorder("bandit")
    recipe._bandit_feedback(torch.tensor([1.0, 0.0]), torch.tensor([[0.5], [0.25]]), torch.tensor([[1, 2], [3, 4]]))
    assert calls == [([1.0, 0.0, 11.0, 10.0], {"context": [[0.5], [0.25], [10.5], [10.25]],
                                               "budgets": [[1, 2], [3, 4], [11, 12], [13, 14]]})]


def test_sync_replicated_averages_gradients_over_ranks(monkeypatch):
    recipe = _bare_recipe()
    recipe.fsdp, recipe.world = True, 2
    a, b, c = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(())), torch.nn.Parameter(
        torch.zeros(2))
    a.grad, b.grad = torch.arange(6.0).view(2, 3), torch.tensor(5.0)  # c has no gradient
    recipe.replicated = [a, c, b]
    other = torch.tensor([10.0, 20, 30, 40, 50, 60, 70])  # the other rank's gradients, flattened

    def all_reduce(t):
        t += other

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    recipe._sync_replicated()
    torch.testing.assert_close(a.grad, torch.tensor([[5.0, 10.5, 16], [21.5, 27, 32.5]]))
    torch.testing.assert_close(b.grad, torch.tensor(37.5))
    assert c.grad is None


def test_clip_returns_the_pre_clip_norm_and_clips_to_grad_clip():
    recipe = _bare_recipe()
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    for clip, scale in ((1.0, 0.2), (None, 1.0), (10.0, 1.0)):
        p.grad, q.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
        recipe.cfg.optim.grad_clip = clip
        assert recipe._clip([p, q, torch.nn.Parameter(torch.zeros(1))]) == pytest.approx(5.0)
        torch.testing.assert_close(torch.cat([p.grad, q.grad]), torch.tensor([3.0, 0.0, 4.0]) * scale,
                                   rtol=1e-5, atol=1e-6)


def test_clip_scales_sharded_and_plain_gradients_by_one_global_norm(tmp_path):
    """FSDP2's DTensor gradients and the replicated layer's plain ones share one norm and are both scaled by it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        p = torch.nn.Parameter(distribute_tensor(torch.zeros(2), mesh, [Shard(0)]))
        q = torch.nn.Parameter(torch.zeros(1))
        recipe = _bare_recipe()
        for clip, scale in ((1.0, 0.2), (None, 1.0)):
            p.grad = distribute_tensor(torch.tensor([3.0, 0.0]), mesh, [Shard(0)])
            q.grad = torch.tensor([4.0])
            recipe.cfg.optim.grad_clip = clip
            assert recipe._clip([p, q]) == pytest.approx(5.0)
            assert isinstance(p.grad, DTensor)
            torch.testing.assert_close(torch.cat([p.grad.full_tensor(), q.grad]),
                                       torch.tensor([3.0, 0.0, 4.0]) * scale, rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_max_minutes_is_minutes_of_the_run_clock(bench, tmp_path, monkeypatch):
    """A fake clock of 25 s a reading (start, then a step's start, end and budget check): with 2 minutes the budget is
    passed at the second step's check (150 s), not the first's (75 s)."""
    clock = itertools.count(0, 25)
    monkeypatch.setattr(train_mod, "time", SimpleNamespace(perf_counter=lambda: float(next(clock)), sleep=time.sleep))
    rows = main(["--config", TINY, f"output_dir={tmp_path / 'run'}", f"data.path={bench}", "data.generate=false",
                 "dist.fsdp=off", "train.max_steps=4", "train.batch_size=4", "train.max_minutes=2"])
    assert [r["step"] for r in rows] == [1, 2] and [r["step_time_s"] for r in rows] == [25.0, 25.0]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_00000002"


def test_a_box_column_is_needed_only_when_grounding_is_on(bench, tmp_path, monkeypatch):
    real = TrainRecipe._dataset
    monkeypatch.setattr(TrainRecipe, "_dataset", lambda self: real(self).remove_columns(["target_box"]))
    common = [f"output_dir={tmp_path / 'run'}", f"data.path={bench}", "data.generate=false", "dist.fsdp=off"]
    TrainRecipe(load_train_cfg(TINY, common)).setup()  # no box column, no grounding: fine
    with pytest.raises(ValueError, match=r"train.grounding_weight=0.5 needs a target_box column"):
        TrainRecipe(load_train_cfg(TINY, common + ["train.grounding_weight=0.5"])).setup()


def test_saliency_distillation_teaches_the_utility_the_answer_losss_gradient_x_input(bench, tmp_path, clean_env):
    """train.saliency_weight: the teacher is |g . e| at the LLM's visual inputs (g the answer loss's gradient at its
    inputs_embeds), averaged per patch (models.relevance.patch_relevance), and its cross-entropy with the utility
    trains knowing and balancing even with the straight-through gate off, where the answer loss alone does not."""
    from models.relevance import gradient_saliency, patch_relevance, relevance_loss

    def recipe_with(weight):
        cfg = load_train_cfg(TINY, [f"output_dir={tmp_path / str(weight)}", f"data.path={bench}", "data.generate=false",
                                    "dist.fsdp=off", "train.batch_size=4", f"train.saliency_weight={weight}",
                                    "model.arr_coc.straight_through=false"])
        r = TrainRecipe(cfg)
        r.setup()
        r.model.train()
        return r

    off, on = recipe_with(0.0), recipe_with(2.0)
    try:
        batch = move_to(next(iter(on._loader())), on.device, on.processor)
        s_off = off._micro_step(batch, 10.0)
        q_off = off.model.arr_coc.knowing.q_proj.weight.grad
        assert q_off is None or not q_off.any()  # the gate is off: the answer loss never reaches the knowing stage
        assert float(s_off["saliency_sum"]) == 0
        s_on = on._micro_step(batch, 10.0)
        assert on.model.arr_coc.knowing.q_proj.weight.grad.abs().sum() > 0
        # The same teacher by hand, from a forward with the LLM's inputs captured.
        m = on.model
        embeds, out = m.embed_inputs(batch["pixel_values"], batch["input_ids"],
                                     query_input_ids=batch["query_input_ids"],
                                     query_attention_mask=batch["query_attention_mask"])
        embeds = embeds.detach().requires_grad_()
        logits = m.llava(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100,
                               reduction="sum")
        (g,) = torch.autograd.grad(loss, embeds)
        teacher = patch_relevance(gradient_saliency(g, embeds), batch["input_ids"] == m.image_token_id,
                                  out.patch_index, out.mask, out.utility.shape[1])
        want = float(relevance_loss(out.utility.detach(), teacher)) * len(batch["labels"])
        assert float(s_on["saliency_sum"]) == pytest.approx(want, rel=1e-5)
        assert teacher.sum(-1).tolist() == pytest.approx([1.0] * len(teacher))
        assert not torch.allclose(teacher, torch.full_like(teacher, 1 / teacher.shape[1]))  # not a uniform target
    finally:
        off.cleanup()
        on.cleanup()


def test_saliency_weight_is_checked(bench, tmp_path, clean_env):
    base = [f"output_dir={tmp_path / 'r'}", f"data.path={bench}", "data.generate=false"]
    with pytest.raises(ValueError, match="train.saliency_weight must be a finite number >= 0, got -1"):
        load_train_cfg(TINY, [*base, "train.saliency_weight=-1"])
    with pytest.raises(ValueError, match="train.saliency_weight must be a finite number >= 0, got 'nan'"):
        load_train_cfg(TINY, [*base, "train.saliency_weight=nan"])
