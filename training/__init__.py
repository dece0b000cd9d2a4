"""Training of the failure detector (needs the `train` extra: PyTorch and the backbone)."""
