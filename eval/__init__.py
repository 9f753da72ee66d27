"""ARR-COC evaluation: VQA metrics, evaluation runs and token-reduction baselines (run from the repo root)."""
