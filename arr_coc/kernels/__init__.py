"""Capped-simplex projection and integer rounding: a pure-torch reference and an optional CUDA kernel."""

from arr_coc.kernels.ops import capped_simplex_projection, project_and_round, round_to_budget

__all__ = ["capped_simplex_projection", "project_and_round", "round_to_budget"]
