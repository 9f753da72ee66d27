"""Shared fixtures for the bandit tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Two shared CPU cores: intra-op threading only adds contention for these tiny tensors."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
