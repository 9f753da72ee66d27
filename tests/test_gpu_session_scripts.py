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
