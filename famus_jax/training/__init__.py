"""Helpers of the training loop (`famus_jax.train`): config schema and
validation, schedules, sharding, checkpoints, metric files and plots."""
