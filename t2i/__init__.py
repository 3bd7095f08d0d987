"""t2i: Imagen, Parti and unCLIP in JAX/Flax on shared, sharded parts."""

__version__ = "0.1.0"
