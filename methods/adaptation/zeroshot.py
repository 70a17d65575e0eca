"""Zero-shot CLIP: the template-ensemble text classifier, no training."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ..base import TEXT_FEATURES, AdaptContext, Learner, Predictor, TrainSet
# LinearPredictor is re-exported: checkpoints written before it moved to methods.core name it
# methods.adaptation.zeroshot:LinearPredictor.
from ..core.predictors import DEFAULT_TEMPERATURE, LinearPredictor, softmax  # noqa: F401
from ..options import Number, PluginOptions
from ..registry import register_adaptation


@register_adaptation("zeroshot")
class ZeroShot(Learner):
    """Ignores labels; the reference row of every comparison table.

    On a multi-label task each label is scored by the softmax over its positive and negative prompt (the
    card's ``negative_templates``), i.e. sigmoid(x·(t+ − t−)/T) with the context's t+ − t− rows.
    """

    requires = frozenset({TEXT_FEATURES})
    multilabel = True

    class Options(PluginOptions):
        temperature: Number = Field(DEFAULT_TEMPERATURE, gt=0, description="softmax temperature, CLIP's 1/100")

    def fit(self, train: TrainSet, ctx: AdaptContext, rng: np.random.Generator) -> Predictor:
        text = np.asarray(ctx.text_features, dtype=np.float32)
        return LinearPredictor(text, np.zeros(len(text), np.float32), self.temperature,
                               multilabel=ctx.task == "multilabel")
