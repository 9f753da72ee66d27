"""Model integration for ARR-COC: open_clip / HF vision towers, query encoders, and the LLaVA drop-in (``ArrCocLlava``).

Not an installed package: run from the repository root (``python -m training.train ...``). Builds on ``arr_coc`` and
adds ``open_clip_torch`` and ``transformers`` (the ``models`` extra).
"""
