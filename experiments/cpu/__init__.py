"""Investigations of the XLA:CPU backend: profiles, levers, convolution layouts, PyTorch beside it."""
