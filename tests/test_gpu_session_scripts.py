"""The one-call GPU session scripts: valid bash, and every module and file they call exists (they only run on a GPU
machine, where a typo would cost a device call)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_bash_syntax(path):
    res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_called_modules_and_files_exist(path):
    text = path.read_text()
    for mod in re.findall(r"-m ((?:scripts|training|eval|models)\.[A-Za-z_.]+)", text):
        assert (ROOT / (mod.replace(".", "/") + ".py")).is_file(), f"{path.name} runs missing module {mod}"
    for rel in re.findall(r"(?:source|--config_file|--config) ((?:scripts|configs)/[\w./-]+)", text):
        assert (ROOT / rel).is_file(), f"{path.name} names missing file {rel}"
    for rel in re.findall(r"\b((?:scripts|tests)/[\w/]+\.py)\b", text):
        assert (ROOT / rel).is_file(), f"{path.name} names missing file {rel}"


@pytest.mark.slow
def test_accuracy_session_real_branch_dry_run_on_cpu(tmp_path):
    # The accuracy session's real (non-SMOKE) branch, with the README's issue-7 knobs but tiny sizes and steps, on
    # this CPU (about 100 s): benchmark at its own sizes, tower pretraining, two seeds of every model the GPU call
    # trains, every evaluation, the export. It found the evaluations refusing a benchmark made at TRAIN_SIZE/TEST_SIZE
    # other than the preset's. Writes /tmp/arr_coc_* as the GPU call does.
    import os
    import sys

    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "PRESET": "small", "TRAIN_SIZE": "96",
           "TEST_SIZE": "24", "PRETRAIN_STEPS": "3", "SEEDS": "0 1", "STEPS": "3", "MODELS": "",
           "UNIFORM_FRACTIONS": "0.25", "FRACTIONS": "1 0.5 0.25 0.125", "FINETUNE_FRACTIONS": "0.125 0.25 0.25 0.5 1",
           "FINETUNE_STEPS": "2", "FINETUNE_LR": "1e-3", "BANDIT_AFTER_STEPS": "2", "SALIENCY_AFTER_STEPS": "2",
           "PARALLEL": "2", "WORKERS": "2", "TOTAL_SECONDS": "1500"}
    res = subprocess.run(["bash", "scripts/gpu_accuracy_session.sh"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    summary = (tmp_path / "summary.txt").read_text()
    for step in ("make_benchmark", "pretrain_vision", "bench", "export"):
        assert f"{step} rc=0" in summary, (summary, (tmp_path / "bench.log").read_text()[-3000:], res.stderr[-2000:])
    md = (tmp_path / "accuracy_budget.md").read_text()
    assert "Seeds: [0, 1]; test rows per evaluation: 24" in md
    for name in ("full", "arr_coc_grounded", "arr_coc_finetuned", "arr_coc_bandit_grounded", "arr_coc_salient",
                 "uniform_trained", "uniform_continued"):
        assert f"| {name} |" in md
    assert (tmp_path / "weights.tar.part-aa").stat().st_size > 0


@pytest.mark.parametrize("pretrain, tower, message", [
    ("0", "/nonexistent/vit.safetensors", "VISION_TOWER=/nonexistent/vit.safetensors: no such file"),
    ("3000", "scripts/gpu_accuracy_session.sh", "and PRETRAIN_STEPS=3000 exclude each other"),
])
def test_accuracy_session_refuses_a_bad_vision_tower_before_any_step(tmp_path, pretrain, tower, message):
    # A carried tower that is missing, or given beside PRETRAIN_STEPS, is refused before the data step runs.
    import os

    env = {**os.environ, "OUT": str(tmp_path), "PRETRAIN_STEPS": pretrain, "VISION_TOWER": tower}
    res = subprocess.run(["bash", "scripts/gpu_accuracy_session.sh"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and message in res.stderr, (res.returncode, res.stderr)
    assert not (tmp_path / "summary.txt").exists()


def test_kernel_session_refuses_a_bad_quick_value_before_any_step(tmp_path):
    # QUICK=1 is the short call (README "CUDA projection kernel"); anything else but 0 must not spend a device call.
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_kernel_session.sh")], cwd=ROOT, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path), "QUICK": "yes"}, timeout=60)
    assert res.returncode == 2 and "QUICK must be 0 or 1, got 'yes'" in res.stderr
    assert not (tmp_path / "summary.txt").exists() and not (tmp_path / "env.txt").exists()
