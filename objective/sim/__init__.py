"""The simulated device: a model of one training run, fitted to real runs (device.py, fit.py)."""
