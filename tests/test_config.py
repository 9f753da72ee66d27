"""Tests for ``ArrCocCfg``, the named presets, ``cfg_from_dict`` and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from arr_coc import PRESETS, ArrCoc, ArrCocCfg, apply_overrides, build_arr_coc, cfg_from_dict
from arr_coc.config import parse_override_value


def test_default_cfg_is_the_arr_coc_0_1_preset():
    cfg = ArrCocCfg()
    assert (cfg.num_patches, cfg.budget, cfg.min_tokens, cfg.max_tokens, cfg.allocator) == \
        (200, 13200, 64, 400, "projection")
    assert PRESETS["arr-coc-0-1"] == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_runs(name):
    # Full width on the meta device (no memory), then a narrow copy on CPU that runs a forward pass.
    full = build_arr_coc(name, device="meta")
    assert isinstance(full, ArrCoc) and all(p.is_meta for p in full.parameters())
    preset = PRESETS[name]
    assert (full.num_patches, full.budget, full.dim) == (preset.num_patches, preset.budget, preset.dim)
    cfg = dataclasses.replace(preset, dim=8, query_dim=8, attn_dim=4)
    torch.manual_seed(0)
    model = build_arr_coc(cfg)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, cfg.num_patches, 2, 2, 8, generator=g)
    with torch.no_grad():
        out = model(feats, query=torch.randn(1, 8, generator=g))
    assert int(out.budgets.sum()) == cfg.budget
    assert cfg.min_tokens <= int(out.budgets.min()) and int(out.budgets.max()) <= cfg.max_tokens
    assert out.tokens.shape == (1, cfg.budget, 8)


def test_build_passes_every_field_through():
    cfg = ArrCocCfg(dim=8, query_dim=8, num_patches=16, budget=320, min_tokens=4, max_tokens=100, allocator="mckp",
                    allocator_kwargs={"levels": [4, 20, 36, 100], "mode": "at_most"}, patch_grid=[2, 8], attn_dim=5,
                    num_prototypes=3, hist_bins=7, straight_through=False, identity_init=True)
    m = build_arr_coc(cfg, dtype=torch.float64)
    assert m.patch_grid == (2, 8) and m.straight_through is False
    assert m.attending.levels == [4, 20, 36, 100] and m.attending.mode == "at_most"
    assert m.knowing.attn_dim == 5 and m.knowing.prototypes.shape == (3, 8) and m.knowing.hist_bins == 7
    assert m.knowing.q_proj.weight.dtype == torch.float64
    torch.testing.assert_close(m.knowing.q_proj.weight, torch.eye(5, 8, dtype=torch.float64))


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'llava'; known presets: \['arr-coc-0-1', 'llava-576'"):
        build_arr_coc("llava")


def test_infeasible_cfg_raises_at_build():
    with pytest.raises(ValueError, match=r"infeasible budget: K·lo = 36·4 = 144 > budget=100"):
        build_arr_coc(dataclasses.replace(PRESETS["llava-576"], budget=100, dim=8, query_dim=8), device="meta")


# -- cfg_from_dict -----------------------------------------------------------------------------------------------------


def test_cfg_from_dict_sets_fields_over_a_base():
    cfg = cfg_from_dict({"budget": 576, "allocator": "mckp"}, base=PRESETS["llava-576"])
    assert (cfg.budget, cfg.allocator, cfg.num_patches, cfg.max_tokens) == (576, "mckp", 36, 64)
    assert cfg_from_dict({}) == ArrCocCfg()


def test_cfg_from_dict_rejects_unknown_keys_naming_them():
    with pytest.raises(ValueError, match=r"unknown ArrCocCfg key\(s\) \['bugdet', 'zzz'\]; known keys: \[.*'budget'"):
        cfg_from_dict({"bugdet": 1, "zzz": 2, "dim": 8})


def test_cfg_from_dict_never_aliases_the_preset():
    preset = PRESETS["arr-coc-0-1"]
    cfg = cfg_from_dict({}, base=preset)
    cfg.allocator_kwargs["levels"] = [64, 400]
    assert preset.allocator_kwargs == {}
    cfg2 = apply_overrides(preset, ["budget=13000"])
    cfg2.allocator_kwargs["mode"] = "at_most"
    assert preset.allocator_kwargs == {} and preset.budget == 13200


# -- overrides ---------------------------------------------------------------------------------------------------------


def test_apply_overrides_parses_types():
    cfg = apply_overrides(ArrCocCfg(), [
        "budget=576", "allocator=mckp", "straight_through=false", "identity_init=True", "patch_grid=[4, 9]",
        "num_patches = 36", 'allocator_kwargs={"levels": [4, 16, 64], "mode": "at_most"}', "min_tokens=4",
        "max_tokens=64"])
    assert cfg.budget == 576 and isinstance(cfg.budget, int)
    assert cfg.allocator == "mckp"
    assert cfg.straight_through is False and cfg.identity_init is True
    assert cfg.patch_grid == [4, 9] and cfg.num_patches == 36
    assert cfg.allocator_kwargs == {"levels": [4, 16, 64], "mode": "at_most"}
    assert apply_overrides(cfg, ["patch_grid=null"]).patch_grid is None
    m = build_arr_coc(dataclasses.replace(cfg, dim=8, query_dim=8), device="meta")
    assert m.patch_grid == (4, 9) and m.attending.levels == [4, 16, 64]


@pytest.mark.parametrize("text,want", [
    ("576", 576), ("-3", -3), ("0.5", 0.5), ("1e3", 1000.0), ("true", True), ("False", False), ("null", None),
    ("None", None), ("none", None), ("mckp", "mckp"), (" projection ", "projection"), ("[1, 2]", [1, 2]),
    ('"42"', "42"),
    ('{"a": [1]}', {"a": [1]}), ("a=b", "a=b"),
])
def test_parse_override_value(text, want):
    got = parse_override_value(text)
    assert got == want and type(got) is type(want)


def test_override_value_may_contain_equals():
    # Only the first '=' splits key from value.
    with pytest.raises(ValueError, match=r"unknown ArrCocCfg key\(s\) \['a'\]"):
        apply_overrides(ArrCocCfg(), ["a=b=c"])
    assert apply_overrides(ArrCocCfg(), ["allocator=x=y"]).allocator == "x=y"


@pytest.mark.parametrize("item,msg", [
    ("budget", r"override 'budget' is not of the form key=value"),
    ("", r"override '' is not of the form key=value"),
    ("=576", r"override '=576' is not of the form key=value"),
    (" =576", r"override ' =576' is not of the form key=value"),
    ("budegt=576", r"unknown ArrCocCfg key\(s\) \['budegt'\]"),
    ("patch_grid=[4, 9", r"malformed list/dict override value '\[4, 9'"),
    ("allocator_kwargs={levels: [4]}", r"malformed list/dict override value"),
])
def test_malformed_overrides_raise(item, msg):
    with pytest.raises(ValueError, match=msg):
        apply_overrides(ArrCocCfg(), [item])


def test_model_and_layer_overrides_share_one_parser():
    from models.builders import apply_overrides as apply_model_overrides

    assert apply_model_overrides({"arr_coc": {"budget": 1}}, [" arr_coc.budget = 96"]) == {"arr_coc": {"budget": 96}}
    with pytest.raises(ValueError, match=r"override '=3' is not of the form key=value"):
        apply_model_overrides({}, ["=3"])


@pytest.mark.parametrize("key,value,msg", [
    ("straight_through", "no", r"straight_through must be true or false, got str: 'no'"),
    ("identity_init", 1, r"identity_init must be true or false, got int: 1"),
    ("min_tokens", "4", r"min_tokens must be an integer, got str: '4'"),
    ("dim", "8", r"dim must be an integer, got str: '8'"),
    ("attn_dim", 2.5, r"attn_dim must be an integer, got float: 2.5"),
    ("hist_bins", "7", r"hist_bins must be an integer, got str: '7'"),
    ("num_patches", True, r"num_patches must be an integer, got bool: True"),
    ("allocator_kwargs", None, r"allocator_kwargs must be a mapping, got NoneType: None"),
    ("allocator", 3, r"allocator must be a registered allocator name, got int: 3"),
    ("patch_grid", [2.5, 1.6], r"patch_grid \(2.5, 1.6\) entry must be an integer, got float: 2.5"),
    ("patch_grid", [-2, -2], r"patch_grid \(-2, -2\) entry must be >= 1, got -2"),
    ("patch_grid", "22", r"patch_grid must be two positive ints \(rows, cols\), got '22'"),
])
def test_cfg_values_of_the_wrong_type_raise_naming_them(key, value, msg):
    # A truthy string or a grid of floats was accepted (2.5 x 1.6 "multiplies" to 4 and became a 2x1 grid); a string
    # number or None failed later with a TypeError from deep inside a constructor.
    small = {"dim": 8, "query_dim": 8, "num_patches": 4, "budget": 16, "min_tokens": 2, "max_tokens": 8}
    with pytest.raises(ValueError, match=msg):
        cfg_from_dict({**small, key: value})
    with pytest.raises(ValueError, match=msg):
        build_arr_coc(ArrCocCfg(**{**small, key: value}), device="meta")
    # Integral floats (a YAML 1.6e1) stay accepted, as the allocators accept them.
    assert build_arr_coc(cfg_from_dict({**small, "budget": 16.0, "patch_grid": [2.0, 2.0]}), device="meta").budget == 16
