"""mixer-jax: MLP-Mixer in JAX/Flax for TPU, GPU and CPU."""
__version__ = '0.1.0'
