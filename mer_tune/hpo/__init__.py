"""Hyperparameter optimisation: spaces, Ray Tune and Optuna, MLflow records, the stage cache,
the outer holdout and the confirm step."""
