"""Investigations of the XLA:CPU backend: profiles, levers, conv layouts, PyTorch beside it."""
