"""Opt-in extras of a run: the progress line, the Optuna dashboard, MLflow tracking."""
