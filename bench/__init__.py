"""Benchmarks of diffpo_jax against PyTorch references (entry point: `python -m bench.run`)."""
