"""Scripts that regenerate a table or figure of the paper, on data that fits a CPU."""
