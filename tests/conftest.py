"""Shared test set-up. pytest puts this folder on ``sys.path`` (rootdir conftest, no ``__init__.py``), so helper
modules here import by their bare name (``from _solvers import ...``): a ``tests`` package installed by some
third-party wheel in site-packages can then never shadow them."""
