"""Static view of the projection kernel's machine code, without a GPU: registers and the Newton loop's length.

    python scripts/kernel_sass.py                 # warp kernel, float32, V=7 (K=200), scalar bounds, sm_90a
    python scripts/kernel_sass.py --v 8 --dtype bf16 --per-element-bounds

The kernel is issue-bound on an H100 (README, "CUDA projection kernel"): its time per row follows the instructions it
issues, most of them in the safeguarded Newton loop, which runs about 6 times per row. This compiles one
``projection_<dtype>.cu`` to a cubin with nvcc (``-O3 -arch=sm_90a``, the build's flags), disassembles the chosen
``projection_warp_kernel`` instantiation with ``cuobjdump`` (CUDA's, or the copy that ships with Triton) and prints its
registers, shared memory, total static instructions and the instructions between the loop's head and its backward
branch (one evaluation of ``s(tau)``, reductions and the Newton step). Counts are static: a measure for comparing two
versions of the source, not a timing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["find_tools", "loop_length", "main"]

CSRC = Path(__file__).resolve().parents[1] / "arr_coc" / "kernels" / "csrc"
_DTYPES = {"f32": ("f32", "f"), "bf16": ("bf16", "N3c108BFloat16E"), "f16": ("f16", "N3c104HalfE"),
           "f64": ("f64", "d")}
_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def find_tools() -> tuple[str, str]:
    """``(nvcc, cuobjdump)`` paths; ``ValueError`` naming what is missing."""
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc = shutil.which("nvcc") or str(Path(cuda) / "bin" / "nvcc")
    cands = [shutil.which("cuobjdump"), str(Path(cuda) / "bin" / "cuobjdump")]
    try:
        import triton

        cands.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    except ImportError:
        pass
    dump = next((c for c in cands if c and Path(c).is_file()), None)
    if not Path(nvcc).is_file():
        raise ValueError(f"nvcc not found (PATH, CUDA_HOME={cuda!r}); this script needs CUDA's compiler")
    if dump is None:
        raise ValueError(f"cuobjdump not found in {[c for c in cands if c]}; install CUDA's binutils or triton")
    return nvcc, dump


def loop_length(sass: str) -> tuple[int, int, int]:
    """``(total, loop, backward branches)``: static instructions, and those between the first backward branch's target
    and the branch itself (the Newton loop: the kernel's first loop that branches back)."""
    insns = [(int(a, 16), text.strip()) for a, text in _INSN.findall(sass)]
    backs = []
    for addr, text in insns:
        m = re.search(r"\bBRA\s+(?:`?\(?)?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            backs.append((int(m.group(1), 16), addr))
    if not backs:
        raise ValueError("no backward branch found: is this the warp kernel?")
    head, tail = backs[0]
    return len(insns), sum(1 for a, _ in insns if head <= a <= tail), len(backs)


def main(argv: list[str] | None = None) -> dict[str, int | str]:
    p = argparse.ArgumentParser(prog="python scripts/kernel_sass.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="f32")
    p.add_argument("--v", type=int, default=7, choices=[1, 2, 3, 4, 5, 6, 7, 8, 16, 32], help="values per lane")
    p.add_argument("--per-element-bounds", action="store_true", help="the (R, K)-bounds instantiation")
    p.add_argument("--arch", default="sm_90a")
    a = p.parse_args(argv)
    if not re.fullmatch(r"sm_\d+[a-z]?", a.arch):  # nvcc's own error would be lost in the captured output
        raise ValueError(f"--arch must name a real GPU architecture such as sm_90a (a cubin needs one), got {a.arch!r}")
    nvcc, dump = find_tools()
    import torch

    inc = Path(torch.__file__).parent / "include"
    stem, mangled_t = _DTYPES[a.dtype]
    fun = (f"_ZN7arr_coc22projection_warp_kernelI{mangled_t}Li{a.v}ELb{0 if a.per_element_bounds else 1}EEEvNS_8"
           f"ProjArgsIT_EE")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cmd = [nvcc, "-O3", "-lineinfo", f"-arch={a.arch}", "-cubin", "-std=c++17", f"-I{CSRC}", f"-I{inc}",
               f"-I{inc / 'torch' / 'csrc' / 'api' / 'include'}", str(CSRC / f"projection_{stem}.cu"), "-o", str(cubin)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        res = subprocess.run([dump, "-res-usage", str(cubin)], check=True, capture_output=True, text=True).stdout
        sass = subprocess.run([dump, "-sass", "-fun", fun, str(cubin)], check=True, capture_output=True,
                              text=True).stdout
    usage = re.search(re.escape(fun) + r":\s*\n\s*REG:(\d+).*?SHARED:(\d+)", res)
    if usage is None:
        raise ValueError(f"{fun} not in the cubin (instantiations: see projection_launch.cuh)")
    total, loop, backs = loop_length(sass)
    out = {"kernel": fun, "registers": int(usage.group(1)), "shared_bytes": int(usage.group(2)),
           "instructions": total, "newton_loop": loop, "backward_branches": backs}
    print(f"{a.dtype} V={a.v} {'per-element' if a.per_element_bounds else 'scalar'} bounds, {a.arch}: "
          f"{out['registers']} registers, {out['shared_bytes']} B shared, {total} instructions, Newton loop {loop}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
