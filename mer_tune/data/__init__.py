"""Datasets: the MERTools layout, packing, synthetic data, feature extraction."""
