"""Batched bandit policies in torch, off-policy evaluation, and constrained allocation (Librex.Alloc).

Policies (all ``nn.Module``; any device; contexts ``(N, d)`` or ``(N, A, d)``):
``EpsilonGreedy``, ``Softmax``, ``UCB1``, ``ThompsonSampling`` (Beta / Gaussian), ``LinUCB``, ``HybridLinUCB``,
``LinTS``, ``NeuralLinear``; forgetting rules ``SlidingWindow``, ``Discount``, ``PageHinkley``.

Each policy offers ``select(contexts) -> (actions, propensities)``, ``action_probabilities(contexts)``,
``update(contexts, actions, rewards)``, ``state_dict()`` / ``load_state_dict()`` and safetensors ``save`` / ``load``.

``arr_coc.bandits.ope`` holds IPS / SNIPS / DR estimators; ``arr_coc.bandits.librex`` the constrained Thompson sampler
and its baselines; ``arr_coc.bandits.classic`` water-filling and knapsack utilities.
"""

from __future__ import annotations

from ._base import BanditPolicy
from .classic import knapsack_dp, knapsack_greedy, max_min_fair, multidim_knapsack
from .greedy import EpsilonGreedy, Softmax
from .librex import (
    ConstrainedThompsonSampling,
    ConstrainedUCB1,
    EpsilonGreedyAlloc,
    GreedyAlloc,
    OracleAlloc,
    ProportionalAlloc,
    RoundRobinAlloc,
    UnconstrainedTS,
    gini,
)
from .linear import HybridLinUCB, LinTS, LinUCB
from .neural import NeuralLinear
from .nonstationary import Discount, PageHinkley, SlidingWindow
from .ope import OPEResult, dr, fit_reward_model, ips, snips
from .thompson import ThompsonSampling
from .ucb import UCB1

__all__ = [
    "BanditPolicy",
    "EpsilonGreedy",
    "Softmax",
    "UCB1",
    "ThompsonSampling",
    "LinUCB",
    "HybridLinUCB",
    "LinTS",
    "NeuralLinear",
    "SlidingWindow",
    "Discount",
    "PageHinkley",
    "OPEResult",
    "ips",
    "snips",
    "dr",
    "fit_reward_model",
    "ConstrainedThompsonSampling",
    "ConstrainedUCB1",
    "UnconstrainedTS",
    "EpsilonGreedyAlloc",
    "RoundRobinAlloc",
    "ProportionalAlloc",
    "GreedyAlloc",
    "OracleAlloc",
    "gini",
    "max_min_fair",
    "knapsack_dp",
    "knapsack_greedy",
    "multidim_knapsack",
]
