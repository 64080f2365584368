"""The public rollout entry point (`generate`, `Rollout` and its `RolloutStats`); the engine behind it is
`rollout.engine`.

Kept as the stable import path: `from tooln1_jax.rollout import sampler; sampler.generate(...)`.
"""

from tooln1_jax.rollout.engine import (  # noqa: F401
    DEFAULT_CHUNK_STEPS, DEFAULT_STOP_IDS, PREFILL_CHUNK, Rollout, RolloutStats, concatenate, generate,
    programs_built, reply_ids)
from tooln1_jax.rollout.inference import InferenceWeights, prepare  # noqa: F401
from tooln1_jax.rollout.sampling import Sampling, filter_logits, sample_step  # noqa: F401
