"""Shared helpers for the bandit tests (``tests/bandits`` and the ``bandit`` allocator's tests).

Import the fixture into a test module or conftest to activate it there: ``from _bandit_helpers import
_single_thread  # noqa: F401``.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Two shared CPU cores: intra-op threading only adds contention for these tiny tensors."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
