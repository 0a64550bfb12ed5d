"""The method: config, model, training loops and the pipeline of one trial (no Ray, no MLflow)."""
