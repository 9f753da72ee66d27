"""scripts/kernel_sass.py: the loop finder on hand-written SASS, and (slow, where nvcc exists) the real kernel."""

from __future__ import annotations

import shutil

import pytest

SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   FADD R2, R3, R4 ;
        /*0020*/                   FADD R5, R2, -R6 ;
        /*0030*/                   FSETP.GT.AND P0, PT, R5, RZ, PT ;
        /*0040*/              @!P0 BRA 0x20 ;
        /*0050*/                   EXIT ;
"""


def test_loop_length_counts_from_the_branch_target_to_the_branch():
    from scripts.kernel_sass import loop_length

    assert loop_length(SASS) == (6, 3, 1)  # 0x20, 0x30, 0x40
    with pytest.raises(ValueError, match="no backward branch"):
        loop_length(SASS.replace("BRA 0x20", "BRA 0x50"))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_real_kernel_newton_loop_is_short():
    # The warp kernel's Newton loop for the default preset (fp32, K=200 -> V=7, scalar bounds): 153 instructions
    # before the full-slot and fast-division changes, 98 after (README). A regression past 110 fails here.
    from scripts.kernel_sass import main

    out = main([])
    assert out["backward_branches"] >= 1 and 60 <= out["newton_loop"] <= 110, out
