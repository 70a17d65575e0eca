"""Per-dataset preparation steps: work a method needs done once per dataset, before any trial.

Some methods need more than the cached embeddings, but not something that
changes from round to round: BioMedVR encodes every attribute sentence of every
class with the frozen text tower; VALIANT trains a segmentation autoencoder on
the pool. Doing that inside each trial would repeat it for every budget x seed,
so a method declares it instead, and the engine runs it once per dataset before
the sweep and caches the outputs beside the feature cache.

A preparation is a plug-in like a strategy or a learner::

    @register_preparation("my_step")
    class MyStep(Preparation):
        version = 1                        # bump when the computation changes: old caches are ignored

        class Options(PluginOptions):      # options come from the method's config, validated here
            width: Int = Field(8, ge=1)

        def run(self, inputs, rng):
            return {"weights": ...}          # named numeric arrays (self.width), nothing pickled

(``PluginOptions`` and ``Int`` come from :mod:`methods.options`; a step with a
keyword constructor of its own still works, its signature read as its options)
and a learner or strategy that wants its outputs puts ``prepared("my_step")``
in its ``requires``. This module knows nothing of the engine (``orchestrator``
imports it, never the other way round).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import prepared, prepared_name  # noqa: F401  (the requires tokens, re-exported for step authors)
from .options import Configurable, options_model
from .registry import Registry

@dataclass
class PreparationInputs:
    """Everything a preparation may read about one dataset; fields it does not need may be None.

    ``identity`` describes where ``pool_features`` / ``images`` come from (e.g.
    the pool cache's source identity and checksum). It is part of the cache
    key, so a step trained on one pool is never reused for another.
    """

    dataset: str
    encoder: str
    precision: str
    class_names: list[str]
    attributes: dict[str, dict[str, list[str]]]  # class -> {"positive", "discriminative", "confusion": [...]}
    pool_features: np.ndarray | None = None
    images: Any = None  # an ImageAccess-like object: pixels(split, rows), size(split)
    device: str | None = None
    identity: dict = field(default_factory=dict)


class Preparation(Configurable, ABC):
    """One per-dataset step. Subclasses set ``version``, declare ``Options`` and implement :meth:`run`.

    The validated options are ``self.options`` (and attributes); resolved,
    they are hashed into the cache directory's name, so different options
    never share a cache.
    """

    name: str = ""
    version: int = 1

    @abstractmethod
    def run(self, inputs: PreparationInputs, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Compute the named numeric arrays this step provides (cached as one ``.npz``)."""


PREPARATIONS: Registry = Registry("preparation step")

#: VALIANT_Multi's decoder, trained on several datasets' pools at once (:mod:`methods.adaptation.blackbox.
#: valiant_multi`): a learner may declare ``prepared(SHARED_VIPD)``, but the engine computes it across datasets
#: (``orchestrator.shared_preparation``), so it is no per-dataset plug-in of :data:`PREPARATIONS`.
SHARED_VIPD = "vipd_shared"
SHARED_PREPARATIONS = frozenset({SHARED_VIPD})


def register_preparation(name: str):
    return PREPARATIONS.register(name)


def create_preparation(name: str, options: dict | None = None) -> Preparation:
    """Build a registered step with validated options (a step that declares none is told so plainly)."""
    options = dict(options or {})
    if options and not options_model(PREPARATIONS.get(name)).model_fields:
        raise ValueError(f"preparation step {name!r} takes no options; got {sorted(options)}")
    return PREPARATIONS.create(name, **options)


def resolved_options(name: str, options: dict | None = None) -> dict:
    """Options with the constructor's defaults filled in: what the cache key hashes."""
    return PREPARATIONS.resolve_options(name, dict(options or {}))


def check_outputs(name: str, arrays: dict) -> dict[str, np.ndarray]:
    """Refuse outputs that cannot be cached as a plain ``.npz`` (objects, strings, bad names)."""
    if not isinstance(arrays, dict) or not arrays:
        raise TypeError(f"preparation step {name!r} must return a non-empty dict of arrays, "
                        f"got {type(arrays).__name__}")
    out = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"preparation step {name!r}: output name {key!r} must be a Python identifier")
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":
            raise TypeError(f"preparation step {name!r}: output {key!r} has dtype {value.dtype}; "
                            "only bool, integer and float arrays are cached (no pickles)")
        out[key] = value
    return out


from . import attribute_embeddings, segmentation_codes  # noqa: E402,F401  (registers the built-in steps)
