"""phi1: a JAX reproduction of phi-1 ("Textbooks Are All You Need", arXiv 2306.11644)."""

__version__ = "0.1.0"
