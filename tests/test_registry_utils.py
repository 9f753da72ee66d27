"""The generic name → class ``Registry`` behind ``register_allocator`` and ``register_baseline``."""

import re

import pytest

from arr_coc._utils import Registry


def _registry() -> Registry:
    return Registry("widget", attr="widget_name")


def test_register_sets_attribute_and_lists_sorted():
    reg = _registry()

    @reg.register("zeta")
    class Z:
        pass

    @reg.register("alpha")
    class A:
        pass

    assert Z.widget_name == "zeta" and A.widget_name == "alpha"
    assert reg.names() == ["alpha", "zeta"]
    assert reg.get("zeta") is Z and reg.get("alpha") is A
    assert "alpha" in reg and "beta" not in reg


def test_register_same_class_twice_is_a_no_op():
    reg = _registry()

    class A:
        pass

    assert reg.register("a")(A) is A
    assert reg.register("a")(A) is A
    assert reg.names() == ["a"]


def test_register_name_taken_by_another_class_names_both():
    reg = _registry()

    @reg.register("a")
    class First:
        pass

    class Second:
        pass

    with pytest.raises(ValueError, match=r"widget 'a' is already registered to First; cannot register Second"):
        reg.register("a")(Second)
    assert reg.get("a") is First and not hasattr(Second, "widget_name")


def test_get_unknown_lists_known_names():
    reg = _registry()
    with pytest.raises(ValueError, match=r"unknown widget 'x'; known widgets: $"):
        reg.get("x")
    for n in ("b", "a"):
        reg.register(n)(type(n.upper(), (), {}))
    with pytest.raises(ValueError, match=r"unknown widget 'x'; known widgets: a, b$"):
        reg.get("x")


def test_registries_are_independent():
    r1, r2 = _registry(), Registry("gadget", attr="gadget_name")

    @r1.register("a")
    class A:
        pass

    assert "a" in r1 and "a" not in r2 and r2.names() == []


def test_allocator_and_baseline_registries_use_it():
    from arr_coc import create_allocator, list_allocators, register_allocator

    with pytest.raises(ValueError, match=r"unknown allocator 'nope'; known allocators: .*uniform"):
        create_allocator("nope")
    uniform = type(create_allocator("uniform"))
    assert uniform.registry_name == "uniform" and "uniform" in list_allocators()
    assert register_allocator("uniform")(uniform) is uniform  # re-registering the same class is fine

    class Impostor:
        pass

    with pytest.raises(ValueError, match=r"allocator 'uniform' is already registered to .*Impostor"):
        register_allocator("uniform")(Impostor)

    baselines = pytest.importorskip("eval.baselines")
    with pytest.raises(ValueError, match=r"unknown baseline 'nope'; known baselines: .*tome"):
        baselines.create_baseline("nope")
    assert baselines.list_methods() == ["arr_coc"] + baselines.list_baselines()
    tome = type(baselines.create_baseline("tome"))
    assert tome.name == "tome"
    with pytest.raises(ValueError, match=r"baseline 'tome' is already registered to .*Impostor"):
        baselines.register_baseline("tome")(Impostor)


def test_create_allocator_names_an_unknown_argument():
    # A misspelt keyword ('eval_polcy') raised a bare TypeError from __init__; it is a ValueError listing the
    # allocator's own arguments, as for unknown config keys.
    from arr_coc import create_allocator

    with pytest.raises(ValueError, match=r"allocator 'bandit' takes no argument\(s\) \['eval_polcy'\]; its arguments: "
                                         r"\[.*'eval_policy'"):
        create_allocator("bandit", eval_polcy="same")
    with pytest.raises(ValueError, match=r"'projection' takes no argument\(s\) \['foo'\]"):
        create_allocator("projection", foo=1)
    assert create_allocator("bandit", context_dim=4, eval_policy="same").eval_policy == "same"


# -- the validation helpers --------------------------------------------------------------------------------------------


def test_check_finite_counts_the_bad_values_and_names_the_first():
    import torch

    from arr_coc._utils import _check_finite

    t = torch.zeros(3, 4)
    t[2, 1], t[0, 3] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"^t contains 2 non-finite value\(s\); first at index \(0, 3\): inf$"):
        _check_finite("t", t)
    with pytest.raises(ValueError, match=r"z contains 1 non-finite value\(s\); first at index \(1,\)"):
        _check_finite("z", torch.tensor([1 + 0j, complex(float("nan"), 0.0)]))
    # Finite values whose sum overflows (float32, and float16 summed in float32 or not) are fine.
    _check_finite("big", torch.tensor([3e38, 3e38]))
    _check_finite("half", torch.full((4,), 6e4, dtype=torch.float16))
    _check_finite("empty", torch.zeros(0))


@pytest.mark.parametrize("k,grid", [(1, (1, 1)), (2, (1, 2)), (6, (2, 3)), (7, (1, 7)), (12, (3, 4)), (16, (4, 4)),
                                    (200, (10, 20)), (576, (24, 24))])
def test_default_patch_grid_is_the_most_square_with_rows_at_most_cols(k, grid):
    from arr_coc._utils import default_patch_grid

    assert default_patch_grid(k) == grid


def test_grid_helpers_refuse_bad_values_by_name():
    from arr_coc._utils import _check_patch_grid, default_patch_grid

    with pytest.raises(ValueError, match=r"num_patches must be >= 1, got 0"):
        default_patch_grid(0)
    with pytest.raises(ValueError, match=r"patch_grid must be two positive ints \(rows, cols\), got \(2, 2, 1\)"):
        _check_patch_grid((2, 2, 1), 4)
    with pytest.raises(ValueError, match=r"patch_grid must be two positive ints \(rows, cols\), got '22'"):
        _check_patch_grid("22", 4)


def test_check_ndim_refuses_too_many_dims_as_well_as_too_few():
    import torch

    from arr_coc._utils import _check_ndim

    _check_ndim("x", torch.zeros(2, 3), 2, "(B, K)")
    for shape in ((2,), (1, 2, 3)):
        with pytest.raises(ValueError, match=re.escape(f"x must have 2 dims (B, K), got shape {shape}")):
            _check_ndim("x", torch.zeros(shape), 2, "(B, K)")
