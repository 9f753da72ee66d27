"""Shared test set-up. pytest puts this folder on ``sys.path`` (rootdir conftest, no ``__init__.py``), so helper
modules here import by their bare name (``from _solvers import ...``): a ``tests`` package installed by some
third-party wheel in site-packages can then never shadow them."""

import os

import pytest
from hypothesis import settings

# Property tests draw fresh random examples on every run by default, so a rare input shape can fail a CI run that
# its change did not cause. CI and `make test` therefore use the "ci" profile (derandomized: the same examples on
# every run, database off). Explore new examples locally with HYPOTHESIS_PROFILE=explore (random, more examples);
# a failure found there prints a @reproduce_failure to pin it as a regression test.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=500, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def keep_threads():
    """Scripts set torch's thread count for the process: put it back for the tests that follow."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
