"""Token allocators: integer per-patch budgets that hit the total exactly. Importing this package registers them."""

from arr_coc.allocators.registry import AllocInfo, Allocator, create_allocator, list_allocators, register_allocator
from arr_coc.allocators import hierarchical, mckp, pgd, projection, proportional, threshold, uniform  # noqa: F401
from arr_coc.allocators import bandit  # noqa: F401
from arr_coc.allocators.hierarchical import HierarchicalAllocator
from arr_coc.allocators.mckp import MCKPAllocator, MCKPSolution, solve_mckp
from arr_coc.allocators.pgd import PGDAllocator
from arr_coc.allocators.projection import ProjectionAllocator
from arr_coc.allocators.proportional import ProportionalAllocator
from arr_coc.allocators.threshold import ThresholdAllocator
from arr_coc.allocators.uniform import UniformAllocator

__all__ = [
    "AllocInfo", "Allocator", "create_allocator", "list_allocators", "register_allocator", "HierarchicalAllocator",
    "MCKPAllocator", "MCKPSolution", "solve_mckp", "PGDAllocator", "ProjectionAllocator", "ProportionalAllocator",
    "ThresholdAllocator", "UniformAllocator",
]
