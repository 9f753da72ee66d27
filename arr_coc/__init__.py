"""ARR-COC: query-aware, exactly budgeted visual-token allocation for vision-language models.

The layer runs four stages, one module each: :class:`Knowing` (three relevance scores per patch),
:class:`Balancing` (opponent processing into one utility), an allocator (integer budgets that sum exactly to the
total) and :class:`Realizing` (exactly that many positioned tokens per patch). :class:`ArrCoc` chains them.
"""

from arr_coc.allocators import AllocInfo, Allocator, create_allocator, list_allocators, register_allocator
from arr_coc.balancing import Balancing
from arr_coc.config import PRESETS, ArrCocCfg, apply_overrides, build_arr_coc, cfg_from_dict
from arr_coc.kernels import capped_simplex_projection, project_and_round, round_to_budget
from arr_coc.knowing import Knowing
from arr_coc.pipeline import ArrCoc, ArrCocOutput
from arr_coc.realizing import Realizing, RealizingOutput

__version__ = "0.1.0"

__all__ = [
    "AllocInfo", "Allocator", "ArrCoc", "ArrCocCfg", "ArrCocOutput", "Balancing", "Knowing", "PRESETS", "Realizing",
    "RealizingOutput", "apply_overrides", "build_arr_coc", "capped_simplex_projection", "cfg_from_dict",
    "create_allocator", "list_allocators", "project_and_round", "register_allocator", "round_to_budget",
]
