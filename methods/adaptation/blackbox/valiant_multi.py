"""VALIANT_Multi (Mahapatra et al., Table 2): one Visual Prompt Decoder trained on the union of several
datasets' pools, shared by every trial that ranks with it.

The decoder, its losses and its instability ranking are VALIANT_Single's (:mod:`.valiant`, eq. 1-8); what
changes is what it is trained on and when. A trial sees one dataset, so the decoder cannot be trained in a
trial: the engine trains it once, before the sweep, on the listed datasets (the ``vipd_shared`` shared
preparation, ``orchestrator.shared_preparation``), caches it, and hands the same weights to every
``vipd_multi`` trial of those datasets. The trial itself queries nothing: ranking by prompt instability needs
no black box. The queries the shared training spent are charged to each trial's round 0
(``shared_queries``), so a method's queries column says what its decoder cost, once per trial that uses it.

Readings (the paper says only "trained across all modalities"; each is stated where it is made):

* **Union sampling.** Each SPSA-GC step draws its batch from one dataset, chosen with probability
  proportional to its pool size (so, in expectation, uniformly over the union's images), because each
  image is sent to the black box with its own task's classes; a batch mixing tasks would mix class spaces.
* **Segmentation codes** come from each dataset's own autoencoder (the per-dataset ``segmentation_codes``
  preparation), not from one autoencoder trained on the union: the decoder reads a 512-d code per image
  either way, but codes of two datasets are not in one space. A joint autoencoder is not built yet.
* **Seed.** The shared decoder is trained with seed 0 (like every preparation): one decoder per sweep, so
  the trials' seeds vary the labelled sets and the linear heads, not the decoder. VALIANT_Single trains one
  decoder per trial seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from ...base import IMAGES, TEXT_FEATURES, AdaptContext, BlackBox, prepared
from ...core.devices import pick_device
from ...core.spsa import flat_parameters, load_flat
from ...preparation import SHARED_VIPD  # the decoder's flat weights and the queries it cost
from ...registry import register_adaptation
from ...segmentation_codes import SEGMENTATION_CODES
from ..prompting.model import frozen_clip
from .training import row_batches, train_by_spsa
from .valiant import VIPDSelector

#: Bump when the shared training changes: cached decoders of the old computation are ignored.
SHARED_VIPD_VERSION = 1


@dataclass
class PoolSource:
    """One dataset's part of the union: its pool pixels, segmentation codes and black-box handle."""

    name: str
    images: object  # ImageAccess: pixels("pool", rows), size("pool")
    segmentation: dict  # the dataset's segmentation_codes arrays (codes, weight, bias, settings)
    blackbox: BlackBox


@register_adaptation("vipd_multi")
class SharedVIPDSelector(VIPDSelector):
    """VALIANT_Multi's selector: the decoder trained once on several pools (before the sweep), instability
    computed on the trial's own pool. Its options are VALIANT's, plus the datasets of the union."""

    requires = frozenset({IMAGES, TEXT_FEATURES, prepared(SEGMENTATION_CODES), prepared(SHARED_VIPD)})

    class Options(VIPDSelector.Options):
        datasets: list[str] | None = Field(
            None, description="the datasets whose pools the shared decoder trains on (None: every dataset of the "
                              "sweep this method runs on); each trial of these datasets uses the same decoder")

    def _fitted_decoder(self, ctx: AdaptContext, codes, encoder, segmentation, generator, rng):
        """The shared weights (trained before the sweep) in a decoder of this trial's shape, and their queries."""
        import torch

        shared = ctx.prepared[SHARED_VIPD]
        decoder = self._decoder(int(np.asarray(ctx.text_features).shape[1]), codes.shape[1], encoder.image_size,
                                torch.Generator().manual_seed(0))  # a shell: its initial weights are replaced
        weights = np.asarray(shared["decoder"], np.float32)
        if weights.size != flat_parameters(decoder).size:
            raise ValueError(f"vipd_multi: the shared decoder has {weights.size} weights but this trial's decoder "
                             f"{flat_parameters(decoder).size}; the datasets of one union must share the encoder "
                             "and the segmentation code size")
        load_flat(decoder, weights)
        return decoder, float(np.asarray(shared["queries"]).sum())

    def train_shared(self, sources: list[PoolSource], encoder_name: str, precision: str, feature_dim: int,
                     seed: int = 0, device: str | None = None) -> dict[str, np.ndarray]:
        """The shared decoder: SPSA-GC on the union of ``sources``' pools (module docstring: union sampling).

        Returns ``decoder`` (flat weights), ``queries`` (per source, what its black box was asked) and
        ``pool_sizes``: plain arrays, cached by the engine.
        """
        import torch

        if not sources:
            raise ValueError("vipd_multi: no datasets to train the shared decoder on")
        code_dims = {np.asarray(s.segmentation["codes"]).shape[1] for s in sources}
        if len(code_dims) != 1:
            raise ValueError(f"vipd_multi: the datasets' segmentation codes differ in size ({sorted(code_dims)}); "
                             "one decoder needs one code size (the segmentation_codes options)")
        encoder = frozen_clip(encoder_name, precision, pick_device(device))
        rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(int(seed))
        decoder = self._decoder(feature_dim, code_dims.pop(), encoder.image_size, generator)
        sizes = np.array([s.images.size("pool") for s in sources], np.int64)
        per_pool = [row_batches(np.arange(n), self.batch_size, rng) for n in sizes]
        codes = [np.asarray(s.segmentation["codes"], np.float32) for s in sources]

        def batches():
            while True:
                i = int(rng.choice(len(sources), p=sizes / sizes.sum()))
                yield i, next(per_pool[i])

        def batch_loss(item):
            i, rows = item
            source = sources[i]
            return self._step_loss(decoder, source.images, codes[i], source.segmentation, source.blackbox, encoder,
                                   generator, rows)

        train_by_spsa(decoder, self.spsa, self.steps, batches(), batch_loss, generator)
        return {"decoder": flat_parameters(decoder), "pool_sizes": sizes,
                "queries": np.array([s.blackbox.queries for s in sources], np.float64)}
