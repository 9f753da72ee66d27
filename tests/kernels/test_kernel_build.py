"""The CUDA sources compile (and the module imports) wherever nvcc is present, even without a GPU."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch

from arr_coc.kernels import dispatch

_HAS_NVCC = shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_NVCC, reason="nvcc not found")
@pytest.mark.skipif(torch.version.cuda is None, reason="torch built without CUDA")
def test_extension_sources_compile(tmp_path, monkeypatch):
    # A fresh build directory: this checks the sources, not a cached build. Several minutes on a 2-core machine.
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0+PTX")
    t0 = time.perf_counter()
    ext = dispatch._build(require_gpu=False, build_directory=str(tmp_path))
    elapsed = time.perf_counter() - t0
    print(f"arr_coc_cuda built and imported in {elapsed:.0f} s")
    assert callable(ext.forward) and callable(ext.backward)
    assert (tmp_path / "arr_coc_cuda.so").exists() or any(tmp_path.glob("arr_coc_cuda*.so"))
