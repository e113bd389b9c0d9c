"""Analysis of training runs: the per-example record and which labels are wrong."""
