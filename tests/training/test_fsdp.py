"""A real 2-process FSDP2 run on CPU (gloo), launched from pytest with ``torchrun`` and ``accelerate launch``.

One module-scoped scenario on a generated mini-benchmark, 8 steps of the tiny preset:

- ``single``: one process, no FSDP (in-process ``main``), the reference;
- ``full``: ``torchrun --nproc_per_node 2``, uninterrupted;
- ``killed``: the same command, stopped by SIGKILL (to the whole process group) once the step-4 checkpoint is on disk;
- ``resumed``: ``accelerate launch --config_file configs/accelerate/fsdp_cpu.yaml ... --resume`` of ``killed``.

Budgets are integers, so a float difference of 1e-7 between 1 and 2 processes can move one token between two
patches once the weights have moved a little; the 1-vs-2 comparison is therefore tight on the first two steps and
looser afterwards, while resuming on the same world size must reproduce the losses exactly.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.train import main

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8
TIMEOUT = 300


def _overrides(out: Path, data: Path) -> list[str]:
    return [f"output_dir={out}", f"data.path={data}", "data.generate=false", f"train.max_steps={STEPS}",
            "train.batch_size=8", "train.save_every=4", "train.keep_last=3"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    env.pop("WORLD_SIZE", None)
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(out: Path, data: Path, *extra: str) -> list[str]:
    # --standalone: a private rendezvous on a free port (runs here overlap, and other suites may use 29500).
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
            "training.train", "--config", "configs/train/tiny.yaml", *_overrides(out, data), *extra]


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    """Wait until ``pid`` is gone or a zombie (dead, waiting to be reaped by whoever adopted it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.1)
    raise AssertionError(f"rank process {pid} survived SIGKILL")


def _losses(out: Path) -> dict[int, float]:
    with open(out / "log.csv", newline="") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def _log_columns(out: Path, keys: tuple[str, ...]) -> dict[int, tuple[float, ...]]:
    """``{step: (the logged keys' values)}`` of a run's log.csv."""
    with open(out / "log.csv", newline="") as f:
        return {int(r["step"]): tuple(float(r[k]) for k in keys) for r in csv.DictReader(f)}


def _mini_bench(tmp_path: Path) -> Path:
    """16 training questions of the tiny generator: enough for 3 steps of 8 with every auxiliary loss."""
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark

    data = tmp_path / "bench"
    make_benchmark(data, seed=0, sizes={"train": 16}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    return data


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, f"{cmd[:6]} failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark

    base = tmp_path_factory.mktemp("fsdp")
    data = base / "bench"
    make_benchmark(data, seed=0, sizes={"train": 32, "val": 4}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))

    # Start the run that will be killed first, so it overlaps with the others.
    killed = base / "killed"
    log = open(base / "killed.log", "w")
    proc = subprocess.Popen(_torchrun(killed, data, "train.hang_after_step=4"), cwd=ROOT, env=_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    full = base / "full"
    full_proc = subprocess.Popen(_torchrun(full, data), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    try:
        single = base / "single"
        main(["--config", "configs/train/tiny.yaml", *_overrides(single, data), "dist.fsdp=off"])
        _, err = full_proc.communicate(timeout=TIMEOUT)
        assert full_proc.returncode == 0, f"the uninterrupted 2-process run failed:\n{err[-6000:]}"

        deadline = time.monotonic() + TIMEOUT
        while not all((killed / f"hang_rank{r}").is_file() for r in (0, 1)):
            if proc.poll() is not None:
                raise AssertionError(f"the run to be killed exited early:\n{(base / 'killed.log').read_text()[-6000:]}")
            assert time.monotonic() < deadline, "the run to be killed never reached its step-4 checkpoint"
            time.sleep(0.2)
        # SIGKILL every rank (each runs in its own session) and the launcher's group, as a machine failure would.
        pids = [json.loads((killed / f"hang_rank{r}").read_text())["pid"] for r in (0, 1)]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        for pid in pids:
            _wait_gone(pid)
    finally:
        if full_proc.poll() is None:
            full_proc.kill()
            full_proc.communicate()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    killed_losses = _losses(killed)
    # A crash mid-save leaves a .tmp folder: resuming must ignore it.
    (killed / "checkpoints" / ".step_00000006.tmp" / "dcp").mkdir(parents=True)

    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    cmd = ([launcher, "launch", "--config_file", "configs/accelerate/fsdp_cpu.yaml", "--main_process_port",
            str(_free_port()), "-m", "training.train"] if launcher else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
            "training.train"])
    _run(cmd + ["--config", "configs/train/tiny.yaml", *_overrides(killed, data), "--resume"])
    return {"single": _losses(single), "full": _losses(full), "killed_before_resume": killed_losses,
            "resumed": _losses(killed), "full_dir": full, "killed_dir": killed, "data": data, "base": base}


def test_parameters_are_sharded(runs):
    reports = [json.loads((runs["full_dir"] / "sharding" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rep in reports:
        assert rep["world_size"] == 2 and rep["n_dtensor"] > 0
        assert rep["placements"] == ["(Shard(dim=0),)"]
        assert rep["dtensor_local_numel"] < rep["dtensor_global_numel"]
        # Only ArrCoc (about 1e3 parameters, some scalar) stays replicated, by design.
        assert rep["replicated"] and all(n.startswith("arr_coc.") for n in rep["replicated"])
        assert rep["n_dtensor"] + len(rep["replicated"]) == rep["n_params"]
    assert sum(r["dtensor_local_numel"] for r in reports) == reports[0]["dtensor_global_numel"]


def test_loss_falls(runs):
    full = runs["full"]
    assert sorted(full) == list(range(1, STEPS + 1))
    assert (full[STEPS - 1] + full[STEPS]) / 2 < (full[1] + full[2]) / 2 - 0.2


def test_one_and_two_processes_agree(runs):
    single, full = runs["single"], runs["full"]
    assert sorted(single) == sorted(full)
    for step in (1, 2):
        assert full[step] == pytest.approx(single[step], rel=1e-5)
    for step in single:
        assert full[step] == pytest.approx(single[step], rel=1e-2)


def test_sigkill_then_resume_reproduces_the_run(runs):
    before, resumed, full = runs["killed_before_resume"], runs["resumed"], runs["full"]
    assert sorted(before) == [1, 2, 3, 4]  # killed while waiting after the step-4 checkpoint
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7)
    ckpts = runs["killed_dir"] / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == f"step_{STEPS:08d}"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000004", f"step_{STEPS:08d}"]


def test_bf16_mixed_precision_two_processes(runs):
    # The GPU recipe's precision path (FSDP2 MixedPrecisionPolicy: bf16 parameters for compute, fp32 gradient
    # reduction and fp32 master weights), run here on CPU with gloo so that it is exercised before a GPU session.
    out = runs["base"] / "bf16"
    _run(_torchrun(out, runs["data"], "dist.mixed_precision=bf16", "train.save_every=null"))
    bf16, fp32 = _losses(out), runs["full"]
    assert sorted(bf16) == list(range(1, STEPS + 1))
    # Really computed in bf16: the first loss moves off the fp32 run's, but only by bf16 rounding.
    assert bf16[1] != fp32[1] and bf16[1] == pytest.approx(fp32[1], rel=2e-2)
    assert (bf16[STEPS - 1] + bf16[STEPS]) / 2 < (bf16[1] + bf16[2]) / 2 - 0.2
    assert json.loads((out / "config.json").read_text())["mixed_precision"] == "bf16"
    from safetensors import safe_open

    with safe_open(str(out / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F32"}  # master weights stay float32


@pytest.mark.parametrize("accum", [1, 2])
def test_auxiliary_losses_two_processes_match_one(tmp_path, accum):
    # Relevance distillation's loss is a per-row mean scaled by this rank's share of the global batch, grounding's a
    # per-row sum over the global batch, and ArrCoc's replicated gradients are averaged over ranks: one process and
    # two must then take the same steps. With gradient accumulation FSDP2 reduces the shards' gradients only after
    # the last micro-batch (set_requires_gradient_sync), so the steps must still match.
    data = _mini_bench(tmp_path)
    extra = ["train.relevance_weight=1.0", "train.grounding_weight=1.0", "train.saliency_weight=1.0",
             "train.max_steps=3", "train.save_every=null", f"train.grad_accum={accum}"]
    main(["--config", "configs/train/tiny.yaml", *_overrides(tmp_path / "one", data), "dist.fsdp=off", *extra])
    _run(_torchrun(tmp_path / "two", data, *extra))
    cols = ("loss", "relevance_loss", "grounding_loss", "saliency_loss", "grad_norm")
    logs = {name: _log_columns(tmp_path / name, cols) for name in ("one", "two")}
    assert sorted(logs["one"]) == sorted(logs["two"]) == [1, 2, 3]
    for step in (1, 2, 3):
        (l1, r1, g1, s1, n1), (l2, r2, g2, s2, n2) = logs["one"][step], logs["two"][step]
        assert r1 > 0 and r2 == pytest.approx(r1, rel=1e-4) and l2 == pytest.approx(l1, rel=1e-4), step
        assert g1 > 0 and g2 == pytest.approx(g1, rel=1e-4), step
        # Saliency distillation's extra gradient pass runs FSDP2's backward hooks twice per micro-batch (once for
        # each pass); the parameters' gradients, and so the steps, must still be those of one process.
        assert s1 > 0 and s2 == pytest.approx(s1, rel=1e-4) and n2 == pytest.approx(n1, rel=1e-4), step


def test_bf16_saliency_two_processes(tmp_path):
    # Saliency distillation's second gradient pass keeps FSDP2's parameters unsharded until the full backward
    # (TrainRecipe._unsharded_after_backward); under the bf16 MixedPrecisionPolicy the unsharded parameters are the
    # bf16 casts, so this is the precision path the GPU recipe takes with saliency on. One fp32 process is the
    # reference: the bf16 run must really differ from it, but only by bf16 rounding, every step.
    data = _mini_bench(tmp_path)
    extra = ["train.saliency_weight=1.0", "train.max_steps=3", "train.save_every=null"]
    main(["--config", "configs/train/tiny.yaml", *_overrides(tmp_path / "one", data), "dist.fsdp=off", *extra])
    _run(_torchrun(tmp_path / "bf16", data, *extra, "dist.mixed_precision=bf16"))
    logs = {name: _log_columns(tmp_path / name, ("loss", "saliency_loss", "grad_norm")) for name in ("one", "bf16")}
    assert sorted(logs["one"]) == sorted(logs["bf16"]) == [1, 2, 3]
    for step in (1, 2, 3):
        (l1, s1, n1), (l2, s2, n2) = logs["one"][step], logs["bf16"][step]
        assert s1 > 0 and s2 > 0 and math.isfinite(n2), step
        assert l2 == pytest.approx(l1, rel=5e-3) and s2 == pytest.approx(s1, rel=2e-2), step
        assert n2 == pytest.approx(n1, rel=5e-2), step
    assert logs["bf16"][1] != logs["one"][1]  # computed in bf16, not silently in fp32
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["mixed_precision"] == "bf16"


def test_activation_checkpointing_two_processes_match_one(tmp_path):
    # dist.activation_checkpointing recomputes the LLM's layers and the tower's blocks in backward, inside FSDP2's
    # hooks (the recompute gathers the layer's shards again). With every auxiliary loss on (saliency's second gradient
    # pass recomputes too), two checkpointed processes must take the steps of one process that keeps its activations.
    data = _mini_bench(tmp_path)
    extra = ["train.relevance_weight=1.0", "train.grounding_weight=1.0", "train.saliency_weight=1.0",
             "train.max_steps=3", "train.save_every=null"]
    main(["--config", "configs/train/tiny.yaml", *_overrides(tmp_path / "one", data), "dist.fsdp=off", *extra])
    res = _run(_torchrun(tmp_path / "ckpt", data, *extra, "dist.activation_checkpointing=true"))
    cols = ("loss", "relevance_loss", "grounding_loss", "saliency_loss", "grad_norm")
    logs = {name: _log_columns(tmp_path / name, cols) for name in ("one", "ckpt")}
    assert sorted(logs["one"]) == sorted(logs["ckpt"]) == [1, 2, 3]
    for step in (1, 2, 3):
        for a, b in zip(logs["one"][step], logs["ckpt"][step]):
            assert a > 0 and b == pytest.approx(a, rel=1e-4), step
    assert "activation checkpointing: the LLM's layers" in res.stderr  # it was on (rank 0 logs it)
