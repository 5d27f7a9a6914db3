"""distill-ray: distributed distillation of causal language models on Ray."""

__version__ = "0.1.0"
