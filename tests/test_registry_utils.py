"""The generic name → class ``Registry`` behind ``register_allocator`` and ``register_baseline``."""

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
