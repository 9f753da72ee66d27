"""ARR-COC training: data loaders, the generated benchmark and training recipes (run from the repo root)."""
