"""Framework-neutral data handling (no jax import)."""
