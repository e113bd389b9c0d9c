"""Studies of our own: the memorisation regime, run-time scopes, fidelity switches, label issues."""
