"""Shared fixtures for the bandit tests."""

from _bandit_helpers import _single_thread  # noqa: F401  (autouse fixture: one intra-op thread per test)
