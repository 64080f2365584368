"""tooln1-jax: Tool-N1 style GRPO training of Qwen2.5 tool-calling models in JAX."""

__version__ = "0.1.0"
