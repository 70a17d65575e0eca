"""Built-in preparation: the card's attribute sentences, encoded once by the frozen text tower.

BioMedVR (and AttrVR before it) score an image against per-class attribute
embeddings: descriptive ("positive"), discriminative (AttrVR) and
confusion-aware sentences (how a class's look-alikes appear, BioMedVR). The text tower is frozen, so
these embeddings never change during a sweep; they are computed here once per
dataset and encoder instead of once per trial.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator

from .options import PluginOptions
from .preparation import Preparation, PreparationInputs, register_preparation

KINDS = ("positive", "discriminative", "confusion")
#: The preparation's name: learners declare ``prepared(ATTRIBUTE_EMBEDDINGS)``.
ATTRIBUTE_EMBEDDINGS = "attribute_embeddings"


def attribute_sentences(inputs: PreparationInputs) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per kind, the sentences in class order and the class id of each (classes without any add none)."""
    out = {}
    for kind in KINDS:
        sentences, owners = [], []
        for cid, cls in enumerate(inputs.class_names):
            for sentence in (inputs.attributes.get(cls) or {}).get(kind, []):
                sentences.append(sentence)
                owners.append(cid)
        out[kind] = (sentences, np.asarray(owners, dtype=np.int64))
    return out


@register_preparation(ATTRIBUTE_EMBEDDINGS)
class AttributeEmbeddings(Preparation):
    """Per kind (``positive``, ``discriminative``, ``confusion``) an (S, D) array and ``<kind>_class`` (S,).

    Rows are L2-normalised float32 text embeddings. ``template`` wraps each
    sentence before encoding (default ``"{}"``: the sentence as the card writes it).
    """

    version = 2  # 2: the discriminative kind

    class Options(PluginOptions):
        template: str = Field("{}", description="wraps each sentence before encoding")

        @field_validator("template")
        @classmethod
        def _one_slot(cls, template):
            if template.count("{}") != 1:
                raise ValueError(f"template must contain exactly one '{{}}' slot for the sentence, got {template!r}")
            return template

    def run(self, inputs: PreparationInputs, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from .core.encoders import load_encoder

        groups = attribute_sentences(inputs)
        every = [s for kind in KINDS for s in groups[kind][0]]
        if not every:
            raise ValueError(
                f"dataset {inputs.dataset} has no attribute sentences in its card; add `attributes:` with "
                "`positive:`, `discriminative:` and/or `confusion:` sentences per class to its card (or its "
                "`attribute_files:`), or drop the method that "
                "needs attribute_embeddings"
            )
        encoder = load_encoder(inputs.encoder, inputs.precision, inputs.device)
        emb = encoder.encode_texts([self.template.format(s) for s in every]).numpy().astype(np.float32)
        out, start = {}, 0
        for kind in KINDS:
            sentences, owners = groups[kind]
            out[kind] = emb[start: start + len(sentences)]
            out[f"{kind}_class"] = owners
            start += len(sentences)
        return out
