"""Rule-based rewards (no jax import)."""
