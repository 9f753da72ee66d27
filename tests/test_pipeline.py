"""End-to-end tests of ``ArrCoc``: the default preset on CPU, every registered allocator, straight-through gradients,
the packed form, meta-device construction and bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import arr_coc
from arr_coc import ArrCoc, create_allocator, list_allocators
from arr_coc.knowing import pixel_entropy, standardize

# A small configuration with room to move: K=16 on a 4x4 grid, 20 tokens per patch on average, 4..100 per patch.
D, K, H, W, LO, HI = 16, 16, 3, 3, 4, 100
BUDGET = K * 20
# Per-allocator kwargs that fit the small configuration (mckp's levels must lie in [LO, HI] and reach BUDGET).
SMALL_KW = {"mckp": {"levels": (4, 20, 36, 100), "mode": "exact"}, "hierarchical": {"region_size": (2, 2)},
            "bandit": {"levels": (4, 20, 36, 100), "mode": "exact"}}
BALANCING = ("weights", "log_focus", "compress")
KNOWING = ("q_proj.weight", "k_proj.weight", "prototypes")


def _inputs(b=2, k=K, h=H, w=W, d=D, dq=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, h, w, d, generator=g), torch.randn(b, dq, generator=g)


def _small(allocator="projection", **kw):
    torch.manual_seed(0)
    return ArrCoc(D, D, num_patches=K, budget=BUDGET, min_tokens=LO, max_tokens=HI, allocator=allocator,
                  allocator_kwargs=SMALL_KW.get(allocator) if isinstance(allocator, str) else None, **kw)


def _check_output(out, b, k, budget, lo, hi, d):
    assert out.budgets.shape == (b, k) and out.budgets.dtype == torch.int64
    assert torch.all(out.budgets.sum(1) == budget)
    assert out.budgets.min() >= lo and out.budgets.max() <= hi
    assert out.tokens.shape == (b, budget, d)
    assert out.mask.shape == (b, budget) and out.mask.all()
    assert out.positions.shape == (b, budget, 2)
    assert out.positions.min() >= 0 and out.positions.max() <= 1
    assert out.scores.shape == (b, k, 3) and out.utility.shape == (b, k)
    assert torch.isfinite(out.tokens).all()
    # Patch k contributes exactly budgets[b, k] tokens.
    counts = torch.stack([torch.bincount(out.patch_index[i], minlength=k) for i in range(b)])
    assert torch.equal(counts, out.budgets)
    assert out.cu_seqlens.tolist() == [budget * i for i in range(b + 1)]


def _grad_sum(model, name):
    g = model.get_parameter(name).grad
    return None if g is None else float(g.abs().sum())


# -- the default preset: K=200, 13,200 tokens, 64..400 -----------------------------------------------------------------


@pytest.fixture(scope="module")
def default_run():
    torch.manual_seed(0)
    model = ArrCoc(64, 64)  # every other argument at the ARR-COC-0-1 default
    feats, query = _inputs(b=2, k=200, h=20, w=20, d=64, dq=64, seed=1)
    return model, model(feats, query=query), feats, query


def test_default_preset_end_to_end(default_run):
    model, out, _, _ = default_run
    assert (model.num_patches, model.budget, model.attending.min_tokens, model.attending.max_tokens) == \
        (200, 13200, 64, 400)
    assert model.patch_grid == (10, 20)
    _check_output(out, 2, 200, 13200, 64, 400, 64)
    assert out.relaxed is not None and out.relaxed.shape == (2, 200)
    torch.testing.assert_close(out.relaxed.sum(1).double(), torch.full((2,), 13200.0, dtype=torch.float64),
                               rtol=1e-5, atol=0)
    # Query-aware, not uniform: the 400 free tokens are not spread evenly.
    assert out.budgets.max() > 66


def test_default_preset_gradients_reach_knowing_and_balancing(default_run):
    model, out, _, _ = default_run
    loss = out.tokens.square().mean()
    loss.backward()
    for name in KNOWING + tuple(f"balancing.{n}" for n in BALANCING):
        full = name if name.startswith("balancing.") else f"knowing.{name}"
        g = model.get_parameter(full).grad
        assert g is not None, full
        assert torch.isfinite(g).all() and g.abs().sum() > 0, full


@torch.no_grad()
def test_default_preset_mckp_exact():
    torch.manual_seed(0)
    model = ArrCoc(64, 64, allocator="mckp")  # levels (64, 128, 256, 400), exact mode
    assert model.attending.levels == [64, 128, 256, 400] and model.attending.mode == "exact"
    feats, query = _inputs(b=2, k=200, h=20, w=20, d=64, dq=64, seed=2)
    out = model(feats, query=query)
    _check_output(out, 2, 200, 13200, 64, 400, 64)
    assert set(out.budgets.unique().tolist()) <= {64, 128, 256, 400}
    assert out.relaxed is None


# -- every registered allocator ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_allocators())
def test_every_allocator_runs_in_arr_coc_and_hits_the_budget(name):
    model = _small(name)
    feats, query = _inputs()
    feats.requires_grad_(True)
    out = model(feats, query=query)
    _check_output(out, 2, K, BUDGET, LO, HI, D)
    if name in ("mckp", "bandit"):
        assert set(out.budgets.unique().tolist()) <= {4, 20, 36, 100}
    out.tokens.square().mean().backward()
    grads = [_grad_sum(model, f"balancing.{n}") for n in BALANCING]
    if name == "uniform":  # a constant relaxation: by design nothing flows upstream
        assert all(g is None or g == 0 for g in grads), grads
    else:
        assert all(g is not None and g > 0 for g in grads), grads
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_allocator_instance_is_used_as_is():
    alloc = create_allocator("proportional", BUDGET, LO, HI)
    model = ArrCoc(D, D, num_patches=K, budget=BUDGET, min_tokens=LO, max_tokens=HI, allocator=alloc)
    assert model.attending is alloc
    feats, query = _inputs()
    _check_output(model(feats, query=query), 2, K, BUDGET, LO, HI, D)


def test_mckp_at_most_reports_slack_and_packed_agrees():
    # Every sum of these levels over 16 patches is 64 + 16·j, so a budget of 321 leaves a slack of at least 1.
    model = ArrCoc(D, D, num_patches=K, budget=BUDGET + 1, min_tokens=LO, max_tokens=HI, allocator="mckp",
                   allocator_kwargs={"levels": (4, 20, 36, 100), "mode": "at_most"})
    feats, query = _inputs(b=3)
    with torch.no_grad():
        out = model(feats, query=query)
    sums = out.budgets.sum(1)
    assert torch.all(sums <= BUDGET + 1)
    assert torch.equal(model.attending.last_info.slack, BUDGET + 1 - sums)
    assert torch.all(model.attending.last_info.slack >= 1)
    assert out.tokens.shape[1] == int(sums.max())
    assert torch.equal(out.mask.sum(1), sums)
    tokens, positions, cu = out.packed()
    assert torch.equal(tokens, out.tokens[out.mask]) and torch.equal(positions, out.positions[out.mask])
    assert cu.dtype == torch.int32 and torch.equal(cu[1:] - cu[:-1], sums.to(torch.int32))


def test_packed_agrees_with_the_mask():
    model = _small("projection")
    feats, query = _inputs(b=3)
    out = model(feats, query=query)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.budgets = out.budgets + 1
    tokens, positions, cu = out.packed()
    assert tokens.shape == (3 * BUDGET, D)
    assert torch.equal(tokens, out.tokens[out.mask])
    assert torch.equal(positions, out.positions[out.mask])
    assert cu.tolist() == [0, BUDGET, 2 * BUDGET, 3 * BUDGET]
    for i in range(3):  # sample i owns rows cu[i]:cu[i+1]
        assert torch.equal(tokens[cu[i]:cu[i + 1]], out.tokens[i])


# -- gradients and the straight-through gate ---------------------------------------------------------------------------


def test_small_gradients_reach_knowing_and_balancing():
    model = _small("projection")
    feats, query = _inputs()
    model(feats, query=query).tokens.square().mean().backward()
    for name in [f"knowing.{n}" for n in KNOWING] + [f"balancing.{n}" for n in BALANCING]:
        assert (_grad_sum(model, name) or 0) > 0, name


def test_pixels_drive_the_propositional_score():
    model = _small("projection")
    feats, query = _inputs()
    g = torch.Generator().manual_seed(4)
    pixels = torch.rand(2, 3, 32, 32, generator=g)
    pixels[:, :, :8, :8] = 0.5  # patch 0 is flat in both samples
    out = model(feats, query=query, pixels=pixels)
    _check_output(out, 2, K, BUDGET, LO, HI, D)
    want = standardize(pixel_entropy(pixels, model.patch_grid, bins=32), dim=1)
    torch.testing.assert_close(out.scores[..., 0], want, atol=1e-5, rtol=0)
    assert torch.all(out.scores[:, 0, 0] == out.scores[..., 0].min(1).values)
    out.tokens.square().mean().backward()
    assert model.knowing.prototypes.grad is None  # the feature codebook is not used with pixels
    assert _grad_sum(model, "knowing.q_proj.weight") > 0


def test_straight_through_false_gives_no_gradient_to_balancing():
    model = _small("projection", straight_through=False)
    feats, query = _inputs()
    feats.requires_grad_(True)  # otherwise the tokens would have no graph at all
    out = model(feats, query=query)
    assert out.relaxed is None
    out.tokens.square().mean().backward()
    for name, p in list(model.balancing.named_parameters()) + list(model.knowing.named_parameters()):
        assert p.grad is None or not p.grad.any(), name
    assert feats.grad.abs().sum() > 0


def test_no_grad_path_has_no_relaxation():
    model = _small("projection")
    feats, query = _inputs()
    with torch.no_grad():
        out = model(feats, query=query)
    assert out.relaxed is None and not out.tokens.requires_grad
    # Same budgets as with the gate: the gate changes gradients only, never values.
    out_grad = model(feats, query=query)
    assert out_grad.relaxed is not None
    assert torch.equal(out.budgets, out_grad.budgets)
    torch.testing.assert_close(out_grad.tokens, out.tokens)



@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_straight_through_gate_is_exactly_one(dtype):
    # Relaxed allocations near 128 and 256: there (1 + a) - a rounds (in bf16 anywhere from 0 to 2), 1 + (a - a) does
    # not. The gate must change gradients only: the tokens equal those of the no-grad path bit for bit.
    torch.manual_seed(0)
    model = ArrCoc(D, D, num_patches=2, budget=255, min_tokens=1, max_tokens=254, dtype=dtype)
    feats, query = _inputs(b=8, k=2, d=D, dq=D)
    feats, query = feats.to(dtype), query.to(dtype)
    out = model(feats, query=query)
    assert out.relaxed is not None and out.tokens.requires_grad
    with torch.no_grad():
        ref = model(feats, query=query)
    assert torch.equal(out.budgets, ref.budgets)
    assert torch.equal(out.tokens, ref.tokens)
    out.tokens.float().square().mean().backward()
    assert model.balancing.log_focus.grad is not None and model.balancing.log_focus.grad.abs().sum() > 0

def test_uncertainty_is_passed_to_balancing():
    model = _small("projection")
    with torch.no_grad():
        model.balancing.explore.fill_(3.0)
    feats, query = _inputs()
    unc = torch.zeros(2, K)
    unc[:, 5] = 1.0
    with torch.no_grad():
        base = model(feats, query=query)
        out = model(feats, query=query, uncertainty=unc)
    assert torch.all(out.budgets[:, 5] > base.budgets[:, 5])
    with pytest.raises(ValueError, match=r"uncertainty shape \(2, 15\)"):
        model(feats, query=query, uncertainty=unc[:, :15])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64])
def test_uncertainty_of_another_dtype_is_refused(dtype):
    # Balancing would cast it to the features' dtype without a word; the pipeline names both dtypes instead.
    model = _small("projection")
    feats, query = _inputs()
    unc = torch.zeros(2, K, dtype=dtype)
    with pytest.raises(ValueError, match=rf"uncertainty has dtype {dtype} but features have dtype torch.float32"):
        model(feats, query=query, uncertainty=unc)
    # uint8 pixels stay accepted (their conversion is deliberate).
    out = model(feats, query=query, pixels=torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    assert (out.budgets.sum(-1) == BUDGET).all()



def test_uncertainty_under_autocast_is_accepted_in_the_scores_dtype():
    # Under autocast the scores are float32 whatever the features: the pipeline asked for the features' bf16 and
    # Balancing then for float32, so no uncertainty was accepted at all.
    model = _small("projection")
    feats, query = _inputs()
    unc = torch.rand(2, K, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(feats.bfloat16(), query=query.bfloat16(), uncertainty=unc)
            assert out.scores.dtype == torch.float32
            assert (out.budgets.sum(-1) == BUDGET).all()
            with pytest.raises(ValueError, match=r"uncertainty has dtype torch.bfloat16 but features have dtype "
                                                 r"torch.bfloat16 under autocast, where the scores are torch.float32"):
                model(feats.bfloat16(), query=query.bfloat16(), uncertainty=unc.bfloat16())
            # float32 features under autocast: float32 uncertainty, as without autocast.
            assert (model(feats, query=query, uncertainty=unc).budgets.sum(-1) == BUDGET).all()


def test_float64_pipeline():
    model = ArrCoc(D, D, num_patches=K, budget=BUDGET, min_tokens=LO, max_tokens=HI, dtype=torch.float64)
    feats, query = _inputs()
    out = model(feats.double(), query=query.double())
    assert out.tokens.dtype == torch.float64
    _check_output(out, 2, K, BUDGET, LO, HI, D)


# -- construction ------------------------------------------------------------------------------------------------------


def test_meta_device_construction_then_materialise():
    model = ArrCoc(D, D, num_patches=K, budget=BUDGET, min_tokens=LO, max_tokens=HI, device="meta")
    assert all(p.is_meta for p in model.parameters())
    default = ArrCoc(1024, 1024, device="meta")  # the full-width default preset costs nothing on meta
    assert all(p.is_meta for p in default.parameters())
    # The FSDP flow: allocate real storage, then re-initialise.
    model.to_empty(device="cpu")
    model.knowing.reset_parameters()
    model.balancing.reset_parameters()
    feats, query = _inputs()
    _check_output(model(feats, query=query), 2, K, BUDGET, LO, HI, D)


def test_construction_errors():
    with pytest.raises(ValueError, match=r"infeasible budget: K·lo = 200·64 = 12800 > budget=12000"):
        ArrCoc(8, 8, budget=12000)
    with pytest.raises(ValueError, match=r"infeasible budget: K·hi = 200·400 = 80000 < budget=90000"):
        ArrCoc(8, 8, budget=90000)
    with pytest.raises(ValueError, match=r"unknown allocator 'nope'; known allocators: .*projection.*uniform"):
        ArrCoc(8, 8, allocator="nope")
    alloc = create_allocator("projection", 13000, 64, 400)
    with pytest.raises(ValueError, match=r"allocator has budget/min/max 13000/64/400 but ArrCoc was given "
                                         r"13200/64/400"):
        ArrCoc(8, 8, allocator=alloc)
    with pytest.raises(ValueError, match=r"allocator_kwargs are only used with an allocator name"):
        ArrCoc(8, 8, allocator=create_allocator("projection"), allocator_kwargs={"x": 1})
    # hierarchical's regions on another layout than the layer's grouped patches that are not neighbours, silently.
    small = {"num_patches": 16, "budget": 64, "min_tokens": 1, "max_tokens": 16}
    with pytest.raises(ValueError, match=r"allocator patch_grid \(2, 8\) differs from ArrCoc's patch_grid \(4, 4\)"):
        ArrCoc(8, 8, **small, patch_grid=(4, 4), allocator="hierarchical", allocator_kwargs={"patch_grid": (2, 8)})
    with pytest.raises(ValueError, match=r"allocator patch_grid \(4, 4\) differs from ArrCoc's patch_grid \(2, 8\)"):
        ArrCoc(8, 8, **small, patch_grid=(2, 8), allocator=create_allocator("hierarchical", 64, 1, 16))
    alloc = create_allocator("hierarchical", 64, 1, 16, patch_grid=(2, 8))
    ok = ArrCoc(8, 8, **small, patch_grid=(2, 8), allocator=alloc)
    assert ok.attending.patch_grid == (2, 8)
    # By name, hierarchical takes the layer's grid (its own default would be the most square (4, 4)).
    assert ArrCoc(8, 8, **small, patch_grid=(2, 8), allocator="hierarchical").attending.patch_grid == (2, 8)
    # A grid of non-integers whose product is K was truncated to another grid ((2.5, 1.6) -> (2, 1) for K=4).
    with pytest.raises(ValueError, match=r"patch_grid \(2.5, 1.6\) entry must be an integer, got float: 2.5"):
        ArrCoc(8, 8, num_patches=4, budget=16, min_tokens=2, max_tokens=8, patch_grid=(2.5, 1.6))
    with pytest.raises(ValueError, match=r"min_tokens must be an integer, got str: '2'"):
        ArrCoc(8, 8, num_patches=4, budget=16, min_tokens="2", max_tokens=8)
    with pytest.raises(ValueError, match=r"num_patches must be an integer, got str: '4'"):
        ArrCoc(8, 8, num_patches="4", budget=16, min_tokens=2, max_tokens=8)
    with pytest.raises(ValueError, match=r"lo > hi: min_tokens=500 > max_tokens=400"):
        ArrCoc(8, 8, min_tokens=500)
    with pytest.raises(ValueError, match=r"identity_init needs query_dim == dim, got 6 != 8"):
        ArrCoc(8, 6, identity_init=True)
    with pytest.raises(ValueError, match=r"patch_grid \(3, 5\) does not multiply to num_patches=16"):
        ArrCoc(8, 8, num_patches=16, budget=320, min_tokens=4, max_tokens=100, patch_grid=(3, 5))


def test_forward_errors():
    model = _small("projection")
    feats, query = _inputs()
    with pytest.raises(ValueError, match=r"features have K=9 patches but ArrCoc\(num_patches=16\)"):
        model(feats[:, :9], query=query)
    with pytest.raises(ValueError, match=r"features have D=12 but ArrCoc\(dim=16\)"):
        model(feats[..., :12], query=query)
    with pytest.raises(ValueError, match=r"query must have shape \(B=2, Dq=16\), got \(3, 16\)"):
        model(feats, query=torch.randn(3, D))
    with pytest.raises(ValueError, match=r"query must have shape \(B=2, Dq=16\), got \(16,\)"):
        model(feats, query=query[0])
    with pytest.raises(ValueError, match=r"query shape \(2, 8\) does not match"):
        model(feats, query=query[:, :8])
    with pytest.raises(ValueError, match=r"features must have 5 dims"):
        model(feats[:, :, 0], query=query)
    with pytest.raises(ValueError, match=r"features must be a torch.Tensor"):
        model(feats.numpy(), query=query)
    bad = feats.clone()
    bad[1, 3, 0, 0, 0] = float("nan")
    msg = r"features contains 1 non-finite value\(s\); first at index \(1, 3, 0, 0, 0\)"
    with pytest.raises(ValueError, match=msg):
        model(bad, query=query)
    bad_q = query.clone()
    bad_q[0, 2] = float("inf")
    with pytest.raises(ValueError, match=r"query contains 1 non-finite value\(s\); first at index \(0, 2\): inf"):
        model(feats, query=bad_q)
    with pytest.raises(ValueError, match=r"pixels batch 1 does not match features batch 2"):
        model(feats, query=query, pixels=torch.rand(1, 3, 16, 16))


def test_public_api_names():
    for name in ("ArrCoc", "ArrCocOutput", "Knowing", "Balancing", "Realizing", "create_allocator", "list_allocators",
                 "capped_simplex_projection", "round_to_budget", "build_arr_coc"):
        assert hasattr(arr_coc, name) and name in arr_coc.__all__, name
    assert {"uniform", "threshold", "proportional", "projection", "pgd", "mckp", "hierarchical"} <= \
        set(list_allocators())


def test_min_tokens_below_one_is_rejected():
    with pytest.raises(ValueError, match=r"min_tokens >= 1.*got 0"):
        ArrCoc(8, 8, num_patches=4, budget=8, min_tokens=0, max_tokens=4)


def test_no_scalar_parameters_so_fsdp_can_shard():
    # FSDP2's fully_shard refuses 0-dim parameters; every ArrCoc parameter must have at least one dimension.
    model = ArrCoc(8, 8, num_patches=4, budget=8, min_tokens=1, max_tokens=4)
    assert all(p.dim() >= 1 for p in model.parameters())


def test_output_carries_the_bandit_context():
    model = _small("bandit")
    feats, query = _inputs()
    with torch.no_grad():
        out = model(feats, query=query)
    assert out.context is not None and out.context.shape == (2, K, D + D + 3)
    assert not out.context.requires_grad
    assert _small("projection")(feats, query=query).context is None
    # [query; patch mean feature; scores], in that order, and detached with gradients on as well.
    torch.testing.assert_close(out.context[..., :D], query[:, None, :].expand(2, K, D))
    torch.testing.assert_close(out.context[..., D:2 * D], feats.mean(dim=(2, 3)))
    torch.testing.assert_close(out.context[..., 2 * D:], out.scores)
    assert not model(feats.requires_grad_(), query=query).context.requires_grad


def test_an_explicit_uncertainty_is_not_replaced_by_the_bandit_width():
    model = _small("bandit")
    with torch.no_grad():
        model.balancing.explore.fill_(2.0)
    feats, query = _inputs()
    unc = torch.rand(2, K, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = model(feats, query=query, uncertainty=unc)
        torch.testing.assert_close(out.utility, model.balancing(out.scores, uncertainty=unc))
        own = model.balancing(out.scores, uncertainty=model.attending.uncertainty(out.context))
        assert not torch.allclose(out.utility, own)  # the check above can tell the two apart


def test_a_frozen_layer_skips_the_relaxation():
    # Nothing upstream can learn: the straight-through gate and its relaxation are not computed (relaxed is None).
    model = _small("projection").requires_grad_(False)
    feats, query = _inputs()
    out = model(feats, query=query)
    assert out.relaxed is None and not out.tokens.requires_grad
    assert model(feats.requires_grad_(), query=query).relaxed is not None


def test_packed_drops_the_padding():
    # Sample 0 has 2 real tokens and one pad, sample 1 has 3: packed() keeps the 5 real ones, in order.
    tokens, positions = torch.arange(18.0).view(2, 3, 3), torch.arange(12.0).view(2, 3, 2)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = arr_coc.ArrCocOutput(tokens=tokens, mask=mask, positions=positions, budgets=torch.tensor([[2], [3]]),
                               scores=torch.zeros(2, 1, 3), utility=torch.zeros(2, 1),
                               patch_index=torch.where(mask, 0, -1), cu_seqlens=torch.tensor([0, 2, 5]))
    t, pos, cu = out.packed()
    assert torch.equal(t, torch.cat([tokens[0, :2], tokens[1]]))
    assert torch.equal(pos, torch.cat([positions[0, :2], positions[1]]))
    assert cu.tolist() == [0, 2, 5]


def test_budget_override_spends_another_budget_and_restores():
    from arr_coc import ArrCoc

    torch.manual_seed(0)
    layer = ArrCoc(8, 8, num_patches=16, patch_grid=(4, 4), budget=32, min_tokens=1, max_tokens=4)
    feats, query = torch.randn(2, 16, 2, 2, 8), torch.randn(2, 8)
    with layer.budget_override(48):
        assert layer.budget == 48
        assert layer(feats, query=query).budgets.sum(-1).tolist() == [48, 48]
    assert layer.budget == 32 and layer(feats, query=query).budgets.sum(-1).tolist() == [32, 32]
    with pytest.raises(ValueError, match="infeasible budget"):
        with layer.budget_override(65):  # K·max = 64
            pass
    assert layer.budget == 32
    with pytest.raises(ValueError, match="budget must be an integer"):
        with layer.budget_override(40.0):
            pass
    # A NumPy integer is an integer (it was refused as one that is not); a bool tensor is not (it was spent as 1).
    with layer.budget_override(np.int64(48)):
        assert layer(feats, query=query).budgets.sum(-1).tolist() == [48, 48]
    # A float tensor was truncated (48.5 -> 48), a two-element one failed with a RuntimeError from int().
    for bad in (torch.tensor(True), np.bool_(True), True, torch.tensor(48.5), torch.tensor([48, 48])):
        with pytest.raises(ValueError, match="budget must be an integer"):
            with layer.budget_override(bad):
                pass
    assert layer.budget == 32


@pytest.mark.parametrize("allocator", ["projection", "mckp"])
def test_torch_compile_of_the_layer_matches_eager_and_still_refuses_nan(allocator):
    # torch.compile traces the layer (its value checks and the realizer's sizes are graph breaks, not errors):
    # the same budgets and tokens, the same gradients, and bad input still raises the eager ValueError.
    layer = _small(allocator)
    feats, query = _inputs()
    feats.requires_grad_(True)
    eager = layer(feats, query=query)
    eager.tokens.square().mean().backward()
    g_eager, feats.grad = feats.grad.clone(), None
    compiled = torch.compile(layer, backend="aot_eager")
    out = compiled(feats, query=query)
    out.tokens.square().mean().backward()
    assert torch.equal(out.budgets, eager.budgets) and torch.equal(out.positions, eager.positions)
    torch.testing.assert_close(out.tokens, eager.tokens)
    torch.testing.assert_close(feats.grad, g_eager)
    bad = feats.detach().clone()
    bad[1, 2, 0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match=r"features contains 1 non-finite value\(s\); first at index \(1, 2, 0, 0, 3\)"):
        compiled(bad, query=query)
