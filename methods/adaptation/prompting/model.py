"""The frozen CLIP a prompt learner drives, loaded once per worker process.

Prompt learners and their predictors are rebuilt in every Ray task from plain
arrays (a round checkpoint holds no modules), so the model they wrap comes
from this cache: one load per (encoder, precision, device) per process.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4)
def frozen_clip(encoder: str, precision: str = "fp32", device: str = "cpu"):
    """A :class:`orchestrator.encoders.FrozenEncoder` whose weights never receive gradients."""
    from methods.core.encoders import FrozenEncoder, parse_encoder

    return FrozenEncoder(parse_encoder(encoder, precision), device)


def logit_scale(encoder) -> float:
    """CLIP's learned inverse temperature (100 for OpenAI's checkpoints)."""
    return float(encoder.model.logit_scale.detach().exp().clamp(max=100.0))
