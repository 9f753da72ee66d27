"""Shared helpers for the bandit tests (``tests/bandits``, the ``bandit`` allocator's tests, the device-leak tests).

Import the fixture into a test module or conftest to activate it there: ``from _bandit_helpers import
_single_thread  # noqa: F401``.
"""

import pytest
import torch

from arr_coc.bandits import (UCB1, BanditPolicy, EpsilonGreedy, HybridLinUCB, LinTS, LinUCB, NeuralLinear, Softmax,
                             ThompsonSampling)


@pytest.fixture(autouse=True)
def _single_thread():
    """Two shared CPU cores: intra-op threading only adds contention for these tiny tensors."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


POLICY_ARMS, POLICY_DIM = 4, 5  # the shapes of make_policy's policies

# Every policy configuration the bandit tests exercise (names for make_policy).
POLICIES = ["eps", "softmax", "ucb1", "ts_beta", "ts_gauss", "linucb", "linucb_sm", "lints", "hybrid", "neural_ucb",
            "neural_ts"]


def make_policy(name: str, dtype=torch.float32, *, neural_train_every: int = 16, **kw) -> BanditPolicy:
    """One of :data:`POLICIES` with ``POLICY_ARMS`` arms and context width ``POLICY_DIM``; ``kw`` goes to the
    constructor (e.g. ``forgetting=``)."""
    a, d = POLICY_ARMS, POLICY_DIM
    f = {
        "eps": lambda: EpsilonGreedy(a, 0.2, dtype=dtype, **kw),
        "softmax": lambda: Softmax(a, 0.5, dtype=dtype, **kw),
        "ucb1": lambda: UCB1(a, dtype=dtype, **kw),
        "ts_beta": lambda: ThompsonSampling(a, "beta", dtype=dtype, **kw),
        "ts_gauss": lambda: ThompsonSampling(a, "gaussian", dtype=dtype, **kw),
        "linucb": lambda: LinUCB(a, d, 0.5, dtype=dtype, **kw),
        "linucb_sm": lambda: LinUCB(a, d, 0.5, solver="sherman_morrison", dtype=dtype, **kw),
        "lints": lambda: LinTS(a, d, 0.5, dtype=dtype, **kw),
        "hybrid": lambda: HybridLinUCB(a, d - 2, 2, 0.5, dtype=dtype, **kw),
        "neural_ucb": lambda: NeuralLinear(a, d, (8, 6), train_every=neural_train_every, train_steps=3, batch_size=8,
                                           dtype=dtype, **kw),
        "neural_ts": lambda: NeuralLinear(a, d, (8,), head="ts", train_every=neural_train_every, train_steps=3,
                                          dtype=dtype, **kw),
    }
    return f[name]()
