"""Timing, compile and FLOP benchmarks of the training steps and the data pipeline."""
