"""famus_jax: FaMUS and meta re-weighting (MW-Net, L2R, MLC) in JAX/Flax."""
