"""README.md's Python usage block runs as printed, and its comments' claims hold."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_usage_block_runs_and_its_comments_hold(capsys):
    text = README.read_text()
    block = re.search(r"```python\n(.*?)```", text[text.index("## Usage"):], re.S).group(1)
    ns: dict = {}
    torch.manual_seed(0)
    exec(compile(block, "README.md#usage", "exec"), ns)  # noqa: S102 (the documented code, verbatim)
    out, layer = ns["out"], ns["layer"]
    assert out.tokens.shape == (2, 13200, 64)  # "exactly 13,200 tokens per image"
    assert out.budgets.sum(-1).tolist() == [13200, 13200]
    assert out.budgets.min() >= 64 and out.budgets.max() <= 400
    assert out.positions.shape == (2, 13200, 2) and out.positions.min() >= 0 and out.positions.max() <= 1
    tokens, pos, cu = ns["tokens"], ns["pos"], ns["cu_seqlens"]
    assert tokens.shape == (26400, 64) and pos.shape == (26400, 2) and cu.tolist() == [0, 13200, 26400]
    assert layer.knowing.q_proj.weight.grad is not None  # "gradients reach knowing + balancing"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.balancing.parameters())
    x, t = ns["x"], ns["t"]
    torch.testing.assert_close(x.sum(-1), torch.full((8,), 13200.0))
    assert x.min() >= 64 and x.max() <= 400
    assert t.dtype == torch.int64 and t.sum(-1).tolist() == [13200] * 8
    assert capsys.readouterr().out.strip() == str(ns["arr_coc"].list_allocators())
