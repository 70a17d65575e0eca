"""Run per-dataset preparation steps once, before the sweep, and cache their outputs.

A preparation (``methods.preparation``) is computed on the driver, outside Ray
Tune, for every (dataset, step) some method of the sweep asks for. Its arrays
live next to the feature cache::

    <cache>/prepared/<dataset>/<encoder key>/<step>-v<version>-<key hash>/
        arrays.npz      (the step's named arrays)
        manifest.json   (written last, atomically: the "complete" flag)

The key hash covers the resolved options, the seed and what the inputs were
made from (class names, attribute sentences, the pool's identity), so a
changed option, card or pool never reuses a stale result; bumping the step's
``version`` does the same for a changed computation. A run killed before the
manifest is written leaves no manifest, and the next run recomputes. A
manifest whose checksum does not match the arrays is logged and recomputed,
never trusted and never fatal.

The computation itself is the plain function :func:`compute_preparation`, so
a step that needs a GPU can later be wrapped in a Ray task without changing
the cache logic.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from methods.core.encoders import EncoderSpec, parse_encoder
from methods.preparation import (PreparationInputs, check_outputs, create_preparation, prepared_name,
                                 resolved_options)

from .features import ensure_writable, file_checksum

log = logging.getLogger(__name__)
MANIFEST_VERSION = 1


@dataclass
class PreparationRequest:
    """One step for one dataset, with the options the method's config gives it."""

    dataset: str
    name: str
    options: dict = field(default_factory=dict)


@dataclass
class PreparedArrays:
    """A step's outputs as the sweep hands them to trials, with where they came from."""

    arrays: dict[str, np.ndarray]
    manifest: dict
    directory: Path
    reused: bool = False


def requested_names(requires: Iterable[str]) -> list[str]:
    """The preparation steps named by ``prepared:<name>`` tokens in a plug-in's ``requires``."""
    return sorted({n for n in (prepared_name(t) for t in requires) if n})


def card_inputs(dataset: str, encoder: str, precision: str = "fp32", pool_features: np.ndarray | None = None,
                images=None, device: str | None = None, identity: dict | None = None) -> PreparationInputs:
    """Inputs built from the dataset card (class names, attributes); the sweep adds pool data when it has it."""
    from datasets.attributes import card_attributes
    from datasets.registry import get_card

    card = get_card(dataset)
    attributes = card_attributes(card)  # inline, or the card's attribute files (a missing file is an error)
    return PreparationInputs(dataset, encoder, precision, list(card.classes), attributes, pool_features, images,
                             device, dict(identity or {}))


def canonical_hash(payload) -> str:
    """sha256 of canonical JSON, the same rule as ``orchestrator.config.config_hash``."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
                          .encode()).hexdigest()[:16]


def cache_key(options: dict, seed: int, inputs: PreparationInputs) -> dict:
    """What a step's result depends on besides its name, version and encoder (those name the folders)."""
    return {"options": options, "seed": int(seed), "class_names": list(inputs.class_names),
            "attributes": inputs.attributes, "identity": inputs.identity}


def preparation_directory(cache_root: Path | str, spec: EncoderSpec, name: str, version: int, key: dict,
                          dataset: str) -> Path:
    return Path(cache_root) / "prepared" / dataset / spec.key / f"{name}-v{int(version)}-{canonical_hash(key)}"


def compute_preparation(name: str, options: dict, inputs: PreparationInputs, seed: int) -> dict[str, np.ndarray]:
    """Run one step: a plain function of its arguments, so it can run on the driver or in a Ray task."""
    step = create_preparation(name, options)
    return check_outputs(name, step.run(inputs, np.random.default_rng(seed)))


def _atomic_write(path: Path, data: bytes) -> None:
    """tmp file + os.replace: a reader sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_prepared(directory: Path) -> PreparedArrays | None:
    """The complete cache in ``directory``, or None (absent, partial or corrupt: the caller recomputes)."""
    manifest_path, arrays_path = directory / "manifest.json", directory / "arrays.npz"
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        if not arrays_path.exists() or file_checksum(arrays_path) != manifest["checksum"]:
            log.warning("preparation cache %s: arrays.npz is missing or does not match its manifest checksum; "
                        "recomputing", directory)
            return None
        with np.load(arrays_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("preparation cache %s is unreadable (%s); recomputing", directory, exc)
        return None
    return PreparedArrays(arrays, manifest, directory, reused=True)


def write_prepared(directory: Path, arrays: dict[str, np.ndarray], manifest: dict) -> PreparedArrays:
    """Write the arrays, then the manifest (with their checksum) last."""
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write(directory / "arrays.npz", buf.getvalue())
    manifest = {**manifest, "checksum": file_checksum(directory / "arrays.npz"),
                "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}}
    _atomic_write(directory / "manifest.json", (json.dumps(manifest, indent=2, default=str) + "\n").encode())
    return PreparedArrays(arrays, manifest, directory, reused=False)


def run_preparation(request: PreparationRequest, cache_root: Path | str, spec: EncoderSpec,
                    inputs: PreparationInputs, seed: int = 0) -> PreparedArrays:
    """One step for one dataset: reuse its complete cache, or compute it and cache it."""
    step = create_preparation(request.name, request.options)  # validates options before any work
    options = resolved_options(request.name, step.options)
    key = cache_key(options, seed, inputs)
    directory = preparation_directory(cache_root, spec, request.name, step.version, key, request.dataset)
    done = load_prepared(directory)
    if done is not None:
        return done
    ensure_writable(directory)  # fail before the work, with the fix, not after it
    t0 = time.time()
    arrays = compute_preparation(request.name, options, inputs, seed)
    manifest = {
        "format": MANIFEST_VERSION, "dataset": request.dataset, "preparation": request.name,
        "version": step.version, "options": options, "seed": int(seed), "identity": inputs.identity,
        "encoder": {"name": spec.name, "key": spec.key, "model": spec.model, "precision": spec.precision},
        "precision": spec.precision, "seconds": round(time.time() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return write_prepared(directory, arrays, manifest)


def _unique(requests: Iterable[PreparationRequest | tuple]) -> list[PreparationRequest]:
    """One request per (dataset, step); the same step asked with different options is an error.

    A plug-in's ``requires`` names a step, not its options, so one trial can
    only be handed one result per step and dataset.
    """
    seen: dict[tuple[str, str], PreparationRequest] = {}
    for r in requests:
        r = PreparationRequest(r.dataset, r.name, r.options) if isinstance(r, PreparationRequest) else \
            PreparationRequest(*r)
        r.options = dict(r.options or {})
        prior = seen.setdefault((r.dataset, r.name), r)
        if resolved_options(r.name, prior.options) != resolved_options(r.name, r.options):
            raise ValueError(f"preparation step {r.name!r} for dataset {r.dataset!r} is requested with different "
                             f"options ({prior.options} and {r.options}); one sweep can use one setting per step")
    return list(seen.values())


def _checked(inputs: PreparationInputs, spec: EncoderSpec) -> PreparationInputs:
    """The cache is keyed by ``spec``; inputs naming another encoder would file results under the wrong key."""
    if (inputs.encoder, inputs.precision) != (spec.name, spec.precision):
        raise ValueError(f"preparation inputs of {inputs.dataset!r} name encoder {inputs.encoder!r} "
                         f"({inputs.precision}) but the sweep runs {spec.name!r} ({spec.precision})")
    return inputs


def run_preparations(requests: Iterable[PreparationRequest | tuple], cache_root: Path | str,
                     encoder: str | EncoderSpec = "tiny-clip", precision: str = "fp32",
                     inputs_for: Callable[[str], PreparationInputs] | None = None,
                     seed: int = 0) -> dict[tuple[str, str], PreparedArrays]:
    """Run (or reuse) every requested step on the driver, before Ray Tune starts.

    ``requests`` are ``PreparationRequest``s or ``(dataset, name[, options])``
    tuples. ``inputs_for(dataset)`` builds a dataset's inputs (default: from
    its card alone, which is all ``attribute_embeddings`` needs); it is called
    once per dataset, so keep it cheap (memory-mapped features, lazy images).
    """
    spec = parse_encoder(encoder, precision) if isinstance(encoder, str) else encoder
    inputs_for = inputs_for or (lambda d: card_inputs(d, spec.name, spec.precision))
    inputs: dict[str, PreparationInputs] = {}
    results: dict[tuple[str, str], PreparedArrays] = {}
    for r in _unique(requests):
        if r.dataset not in inputs:
            inputs[r.dataset] = _checked(inputs_for(r.dataset), spec)
        results[(r.dataset, r.name)] = run_preparation(r, cache_root, spec, inputs[r.dataset], seed)
    return results
