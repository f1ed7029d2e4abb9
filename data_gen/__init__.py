"""data_gen: building phi-1's corpora (filtered code, synthetic textbooks and exercises).

Stands apart from `phi1`: nothing here imports JAX unless you ask for model embeddings.
"""

__version__ = "0.1.0"
