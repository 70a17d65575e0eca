"""Preparations shared across datasets: work done once for a group of datasets, before any trial.

A per-dataset preparation (:mod:`orchestrator.preparation`) sees one dataset. VALIANT_Multi's decoder is
trained on the union of several datasets' pools, through each dataset's black box, so it is computed here,
after every dataset is embedded and prepared, and handed to every trial of those datasets as the
``vipd_shared`` prepared arrays. Its cache follows the per-dataset rules (manifest written last, checksum
checked, a changed option, pool or black box never reuses a stale result)::

    <cache>/prepared/_shared/<encoder key>/vipd_shared-v<version>-<key hash>/{arrays.npz, manifest.json}

A dataset can be in one union only per sweep (a trial is handed one ``vipd_shared``); the groups are checked
before Ray starts (:func:`shared_requests`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from methods.adaptation.blackbox.valiant_multi import SHARED_VIPD_VERSION, PoolSource
from methods.core.encoders import parse_encoder
from methods.preparation import SHARED_VIPD
from methods.segmentation_codes import SEGMENTATION_CODES

from .config import SweepConfig
from .features import ensure_writable
from .preparation import MANIFEST_VERSION, load_prepared, preparation_directory, write_prepared

log = logging.getLogger(__name__)
LEARNER = "vipd_multi"
SHARED_FOLDER = "_shared"  # under <cache>/prepared/, where a per-dataset step has its dataset's folder
SEED = 0


@dataclass(frozen=True)
class SharedRequest:
    """One shared decoder: the union's datasets (sorted) and the learner's resolved options."""

    datasets: tuple[str, ...]
    options: dict


def _vipd_multi_parts(config: SweepConfig):
    for method in config.methods:
        for kind, name, options in method.parts():
            if kind == "adaptation" and name == LEARNER:
                yield method, options


def shared_requests(config: SweepConfig) -> list[SharedRequest]:
    """The shared decoders the sweep needs, checked: datasets the sweep runs, a black box, one union per dataset."""
    from methods.registry import ADAPTATIONS

    requests: dict[str, SharedRequest] = {}
    for method, options in _vipd_multi_parts(config):
        if config.blackbox is None:
            raise ValueError(f"method {method.name!r}: vipd_multi trains its decoder through the black box, but the "
                             "sweep configures none; add `blackbox: {encoder: ...}`")
        resolved = ADAPTATIONS.resolve_options(LEARNER, options)
        union = resolved.pop("datasets") or [d for d in config.datasets if method.runs_on(d)]
        unknown = sorted(set(union) - set(config.datasets))
        if unknown:
            raise ValueError(f"method {method.name!r}: vipd_multi's datasets {unknown} are not datasets of the sweep "
                             f"({config.datasets}); the union can only hold pools the sweep embeds")
        outside = sorted(d for d in config.datasets if method.runs_on(d) and d not in union)
        if outside:
            raise ValueError(f"method {method.name!r} runs on {outside}, which are not in its vipd_multi datasets "
                             f"{sorted(union)}; add them, or restrict the method with `datasets:`")
        request = SharedRequest(tuple(sorted(set(union))), resolved)
        for dataset in request.datasets:
            prior = requests.setdefault(dataset, request)
            if prior != request:
                raise ValueError(f"dataset {dataset!r} is in two vipd_multi unions ({list(prior.datasets)} and "
                                 f"{list(request.datasets)}, or the same with other options); a trial can use one "
                                 "shared decoder, so one sweep can train one per dataset")
    unique: list[SharedRequest] = []
    for request in requests.values():
        if request not in unique:
            unique.append(request)
    return unique


def _sources(request: SharedRequest, data: dict[str, dict]) -> list[PoolSource]:
    import ray

    def codes(dataset: str) -> dict:  # writable copies: the object store hands out read-only views
        return {k: np.array(ray.get(v)) for k, v in data[dataset]["prepared"][SEGMENTATION_CODES].items()}

    return [PoolSource(d, data[d]["images"], codes(d), data[d]["blackbox"].open()) for d in request.datasets]


def _key(request: SharedRequest, config: SweepConfig, data: dict[str, dict]) -> dict:
    return {"datasets": list(request.datasets), "options": request.options, "seed": SEED,
            "pools": {d: data[d].get("pool_identity") for d in request.datasets},
            "blackbox": config.blackbox.answers() if config.blackbox else None}


def run_shared_preparations(config: SweepConfig, data: dict[str, dict], cache_root: Path, say=print) -> None:
    """Train (or reuse from the cache) every shared decoder and add it to each of its datasets' ``prepared``."""
    import ray

    from methods.registry import ADAPTATIONS

    spec = parse_encoder(config.encoder, config.precision)
    for request in shared_requests(config):
        key = _key(request, config, data)
        directory = preparation_directory(cache_root, spec, SHARED_VIPD, SHARED_VIPD_VERSION, key, SHARED_FOLDER)
        done = load_prepared(directory)
        if done is None:
            ensure_writable(directory)
            say(f"training VALIANT_Multi's shared decoder on {', '.join(request.datasets)} (once, through the "
                "black box)")
            t0 = time.time()
            learner = ADAPTATIONS.create(LEARNER, **request.options)
            feature_dim = int(ray.get(data[request.datasets[0]]["text_features"]).shape[1])
            arrays = learner.train_shared(_sources(request, data), config.encoder, config.precision, feature_dim,
                                          SEED)
            done = write_prepared(directory, arrays, {
                "format": MANIFEST_VERSION, "preparation": SHARED_VIPD, "version": SHARED_VIPD_VERSION,
                "datasets": list(request.datasets), "key": key, "seconds": round(time.time() - t0, 3),
                "queries": float(arrays["queries"].sum()), "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        say(f"VALIANT_Multi's shared decoder ({', '.join(request.datasets)}): "
            f"{done.manifest['queries']:,.0f} black-box queries, {'reused from' if done.reused else 'cached in'} "
            f"{directory}")
        refs = {k: ray.put(v) for k, v in done.arrays.items()}
        for dataset in request.datasets:
            data[dataset]["prepared"][SHARED_VIPD] = refs
