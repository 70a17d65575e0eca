"""What a plug-in sees: selection and adaptation contexts built from its declared inputs only.

Both builders run *inside* the phase's Ray task, next to the arrays in the
object store, so nothing big is copied to get there, and each computes only
what the plug-in declared in ``requires``: a random strategy never pays for
pool-wide probabilities, a linear probe never gets pixels or the black box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from methods.base import (ATTRIBUTES, BLACKBOX, CLASS_EMBEDDINGS, DESCRIPTIONS, EMBEDDINGS, IMAGES, POOL_FEATURES,
                          POOL_LABELS, PREDICTOR, PROBS, PROVENANCE, TEXT_FEATURES, UNLABELLED, AdaptContext, BlackBox,
                          ImageAccess, Predictor, SelectionContext, TrainSet, output_name, prepared_name)


@dataclass
class TrialData:
    """A trial's arrays, each either a numpy array or a Ray ObjectRef to one, and what describes them."""

    pool_features: Any
    pool_labels: Any
    test_features: Any
    test_labels: Any
    text_features: Any  # (C, D) class embeddings (template ensemble)
    task: str
    num_classes: int
    metric: str  # the dataset's default metric key
    # What prompt learners need to drive the encoder's towers themselves (see methods.base.AdaptContext).
    encoder: str = "tiny-clip"
    precision: str = "fp32"
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    attributes: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # class -> {positive, discriminative, confusion}
    images: ImageAccess | None = None  # pixels of pool and test, for plug-ins that use the image path
    blackbox: Any = None  # a picklable spec with .open() -> BlackBox, when the sweep configures one
    prepared: dict[str, dict[str, Any]] = field(default_factory=dict)  # preparation name -> its arrays
    class_descriptions: dict[str, list[str]] = field(default_factory=dict)  # from the card's description file
    oracle_labels: Any = None  # what the oracle answers per pool row when it is noisy (None: the true labels)

    @property
    def descriptions(self) -> dict[str, list[str]]:
        """The card's description file when it names one (see datasets.descriptions), else its positive attributes."""
        if self.class_descriptions:
            return {c: list(s) for c, s in self.class_descriptions.items()}
        return {c: list(a.get("positive", ())) for c, a in self.attributes.items() if a.get("positive")}


def get(value):
    """The array behind an ObjectRef (zero-copy from the object store), or the value itself."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


@dataclass
class LedgerView:
    """The part of the ledger a selection may see: permanent rows and the transient labels in force."""

    labelled: np.ndarray
    targets: np.ndarray
    sources: np.ndarray
    transient: dict[int, Any]
    pool_size: int

    @property
    def unlabelled(self) -> np.ndarray:
        mask = np.ones(self.pool_size, bool)
        mask[self.labelled] = False
        return np.flatnonzero(mask)

    @classmethod
    def of(cls, ledger, pool_size: int) -> "LedgerView":
        rows = ledger.permanent()
        transient = {r: ledger.targets[r] for r in ledger.order if r in ledger.transient}
        return cls(rows, ledger.targets_of(rows), ledger.sources_of(rows), transient, pool_size)


def _pool_outputs(needs, predictor: Predictor, features, images: ImageAccess | None) -> dict[str, np.ndarray]:
    names = [n for n in map(output_name, needs) if n]
    if predictor.on_pixels:
        return {n: predictor.predict_output_images(n, images, "pool") for n in names}
    return {n: predictor.predict_output(n, features) for n in names}


def selection_context(needs: frozenset[str], data: TrialData, predictor: Predictor, view: LedgerView,
                      round_: int, blackbox: BlackBox | None) -> SelectionContext:
    """The context of one ``select`` call, with exactly the declared inputs filled in.

    An image-path predictor (VPT, MaPLe) scores the pool by re-encoding its
    pixels here, inside the task that holds the trial's GPU.
    """
    on_pixels = predictor.on_pixels
    model_reads_features = not on_pixels and bool(needs & {PROBS, EMBEDDINGS} or any(map(output_name, needs)))
    features = get(data.pool_features) if needs & {POOL_FEATURES, PREDICTOR} or model_reads_features else None
    probs = embeddings = None
    if PROBS in needs:
        probs = predictor.predict_proba_images(data.images, "pool") if on_pixels else predictor.predict_proba(features)
    if EMBEDDINGS in needs:
        embeddings = predictor.embed_images(data.images, "pool") if on_pixels else predictor.embed(features)
    return SelectionContext(
        round=round_, num_classes=data.num_classes, unlabelled=view.unlabelled, labelled=view.labelled,
        labelled_targets=view.targets,
        pool_features=features if POOL_FEATURES in needs else None,
        probs=probs, embeddings=embeddings,
        text_features=get(data.text_features) if TEXT_FEATURES in needs else None,
        class_embeddings=predictor.class_embeddings() if CLASS_EMBEDDINGS in needs else None,
        predictor=predictor if PREDICTOR in needs else None,
        images=data.images if IMAGES in needs else None,
        blackbox=blackbox if BLACKBOX in needs else None,
        labelled_sources=view.sources if PROVENANCE in needs else None,
        transient=dict(view.transient) if PROVENANCE in needs else None,
        pool_labels=np.asarray(get(data.pool_labels)) if POOL_LABELS in needs else None,
        outputs=_pool_outputs(needs, predictor, features, data.images), task=data.task,
    )


def train_set(data: TrialData, ledger, queried_only: bool = False) -> TrainSet:
    """The labelled rows a learner trains on (``queried_only``: the oracle's rows alone)."""
    rows, targets, pseudo = ledger.arrays()
    keep = ~pseudo if queried_only else np.ones(len(rows), bool)
    rows, targets, pseudo = rows[keep], targets[keep], pseudo[keep]
    pool = get(data.pool_features)
    return TrainSet(np.asarray(pool[rows], dtype=np.float32), targets, pseudo, rows=rows,
                    sources=ledger.sources_of(rows))


def adapt_context(needs: frozenset[str], data: TrialData, ledger, round_: int, previous: Predictor | None,
                  blackbox: BlackBox | None) -> AdaptContext:
    """The context of one ``fit`` call, with exactly the declared inputs filled in."""
    pool_size = len(get(data.pool_labels))
    return AdaptContext(
        data.num_classes, round_, np.asarray(get(data.text_features)) if TEXT_FEATURES in needs else None,
        encoder=data.encoder, precision=data.precision, class_names=list(data.class_names),
        templates=list(data.templates),
        descriptions=data.descriptions if DESCRIPTIONS in needs else {},
        attributes={c: dict(a) for c, a in data.attributes.items()} if ATTRIBUTES in needs else {},
        images=data.images if IMAGES in needs else None,
        blackbox=blackbox if BLACKBOX in needs else None,
        pool_features=get(data.pool_features) if POOL_FEATURES in needs else None,
        unlabelled=LedgerView.of(ledger, pool_size).unlabelled if UNLABELLED in needs else None,
        prepared={n: {k: get(v) for k, v in data.prepared[n].items()}
                  for n in map(prepared_name, needs) if n},
        previous=previous, task=data.task,
    )


def open_blackbox(needs: frozenset[str], data: TrialData) -> BlackBox | None:
    """A fresh counting handle for one phase, only for plug-ins that declared it."""
    if BLACKBOX not in needs:
        return None
    if data.blackbox is None:
        raise ValueError("a plug-in declares the black box, but the sweep configures none (add `blackbox:`)")
    return data.blackbox.open()
