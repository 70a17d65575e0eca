"""Embed an image pool once with Ray Data and cache it for every later trial.

Pipeline: index list -> Ray Data CPU tasks that decode and apply the
encoder's own evaluation transform -> a pool of actors holding the frozen
encoder (one GPU each when the cluster has GPUs; :mod:`.encoder_pool`, which
outlives the call inside an ``encoder_session()``) -> the driver, which writes
fixed index-range parquet shards atomically as they fill up.

Layout of one split's cache (never shared between encoders, weights,
precisions, preprocessing or source identities)::

    <cache>/<encoder key>/<dataset>/<split>-<source id>-<preprocess id>/
        shard-000000000-000004096.parquet ...   (index, embedding)
        features.npy  labels.npy  indices.npy    (consolidated, memory-mappable)
        manifest.json                             (written last: the "complete" flag)

A run killed half-way leaves complete shards and no manifest; the next run
embeds only the missing index ranges. Trials memory-map ``features.npy``, so
a node holds one copy in its page cache however many trials read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from methods.core.encoders import EncoderSpec, build_preprocess, parse_encoder

from .pixels import PixelTransform

DEFAULT_CACHE = Path(os.environ.get("ALVLM_CACHE_DIR", "cache")).expanduser()
MANIFEST_VERSION = 1
OnCorrupt = Literal["fail", "skip"]


class CacheNotWritableError(PermissionError):
    pass


class CorruptImagesError(ValueError):
    """Images that could not be decoded; ``paths`` lists them all."""

    def __init__(self, paths: list[str]):
        shown = "\n  ".join(paths[:20]) + (f"\n  ... and {len(paths) - 20} more" if len(paths) > 20 else "")
        super().__init__(
            f"{len(paths)} image(s) could not be decoded:\n  {shown}\n"
            "Fix or remove these files, or rerun with --on-corrupt skip to leave them out (they are then listed "
            "in the cache manifest). Shards already embedded are kept."
        )
        self.paths = paths


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def ensure_writable(directory: Path) -> None:
    """Fail early, with the fix, when the cache directory cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as exc:
        raise CacheNotWritableError(
            f"cache directory {directory} is not writable ({exc.strerror or exc}); "
            "pass a writable --cache DIR (or set ALVLM_CACHE_DIR) or fix its permissions"
        ) from exc


@dataclass
class CachedSplit:
    """One split's embeddings as trials see them: memory-mapped, never copied per trial."""

    features: np.ndarray  # (n, d) float32/float16, memory-mapped
    labels: np.ndarray  # (n,) or (n, C)
    indices: np.ndarray  # (n,) source index of each row (rows of skipped images are absent)
    manifest: dict
    directory: Path
    reused: bool = False

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class SplitCache:
    """Paths and state of one split's cache directory."""

    directory: Path
    shard_size: int

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def shard_path(self, start: int, stop: int) -> Path:
        return self.directory / f"shard-{start:09d}-{stop:09d}.parquet"

    def plan(self, n: int) -> list[tuple[int, int]]:
        return [(s, min(s + self.shard_size, n)) for s in range(0, n, self.shard_size)]

    def valid_shards(self, n: int) -> dict[tuple[int, int], Path]:
        """Shards of the current plan that exist and can be read; unreadable ones are removed."""
        import pyarrow.parquet as pq

        found = {}
        for start, stop in self.plan(n):
            path = self.shard_path(start, stop)
            if not path.exists():
                continue
            try:
                pq.read_metadata(path)
                found[(start, stop)] = path
            except Exception:
                path.unlink(missing_ok=True)
        return found

    def load(self, mmap: bool = True) -> CachedSplit | None:
        """The complete cache, or None when it is absent, partial or inconsistent."""
        if not self.manifest_path.exists():
            return None
        manifest = json.loads(self.manifest_path.read_text())
        try:
            mode = "r" if mmap else None
            features = np.load(self.directory / "features.npy", mmap_mode=mode)
            labels = np.load(self.directory / "labels.npy")
            indices = np.load(self.directory / "indices.npy")
        except (OSError, ValueError):
            return None
        if features.shape != (manifest["count"], manifest["dim"]) or len(indices) != manifest["count"]:
            return None
        return CachedSplit(features, labels, indices, manifest, self.directory)


def file_checksum(path: Path) -> str:
    """sha256 of a file read in 4 MiB blocks (feature caches, prepared arrays)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- Ray stages


def _decode_batch(batch: dict, sources: list, pixels_of: PixelTransform) -> dict:
    """CPU stage: pixels for each (job, index) row, with a decode error string instead of an exception."""
    from datasets.sources.base import CorruptImageError

    jobs, indices = batch["data"][:, 0], batch["data"][:, 1]
    pixels = np.zeros((len(indices), *pixels_of.shape), dtype=np.float32)
    errors = [""] * len(indices)
    for job in np.unique(jobs):
        rows = np.flatnonzero(jobs == job)
        source = sources[int(job)]
        if hasattr(source, "render"):  # synthetic: render and transform the whole group at once
            pixels[rows] = pixels_of.uint8_batch(source.render(indices[rows]))
            continue
        for r in rows:
            try:
                pixels[r] = pixels_of.image(source.load(int(indices[r])))
            except (CorruptImageError, OSError) as exc:
                errors[r] = getattr(exc, "location", None) or f"{source.locate(int(indices[r]))}: {exc}"
    return {"job": jobs, "index": indices, "pixels": pixels, "error": np.asarray(errors, dtype=object)}


# ---------------------------------------------------------------- driver


@dataclass
class EmbedOptions:
    batch_size: int = 256
    shard_size: int = 4096
    num_actors: int | None = None  # default: GPUs in the cluster, else 1 CPU actor
    # one CPU per decode task: at 0.5 two decode processes shared the core the actor left free, each
    # importing Ray Data, and a cold 20K-image call took 23.4 s instead of 20.4 s on two cores
    decode_cpus: float = 1.0
    # CPU actors: default = half the cluster's CPUs shared by the actors, the other half decodes (all of
    # them oversubscribed the cores while decode tasks ran: 23.8 s for 20K images in a session, 19.4 s at half)
    threads_per_actor: int | None = None
    on_corrupt: OnCorrupt = "fail"
    dtype: Literal["float32", "float16"] = "float32"
    device: str | None = None


@dataclass
class _Job:
    """One (dataset, split) to embed: its source, its cache, and the index ranges still missing."""

    dataset: str
    source: object
    cache: "SplitCache"
    missing: list[tuple[int, int]]
    resumed_shards: int


def split_cache(cache_root: Path, spec: EncoderSpec, dataset: str, source, shard_size: int) -> SplitCache:
    preprocess_id = hashlib.sha256(repr(build_preprocess(spec)).encode()).hexdigest()[:12]
    directory = Path(cache_root) / spec.key / dataset / f"{source.split}-{_digest(source.identity())}-{preprocess_id}"
    return SplitCache(directory, shard_size)


def embed_splits(requests: list[tuple[str, str]], encoder: str | EncoderSpec = "tiny-clip",
                 cache_root: Path | str = DEFAULT_CACHE, options: EmbedOptions | None = None,
                 data_root: str | None = None, source_options: dict | None = None,
                 address: str | None = None) -> dict[tuple[str, str], CachedSplit]:
    """Embed several (dataset, split) pairs in one Ray Data pipeline (one encoder actor pool).

    Complete caches are reused untouched; partial ones are completed; corrupt
    images either fail the call after every good shard is written
    (``on_corrupt="fail"``) or are left out and listed in the manifest.
    """
    from datasets.registry import open_split

    options = options or EmbedOptions()
    spec = parse_encoder(encoder) if isinstance(encoder, str) else encoder
    results: dict[tuple[str, str], CachedSplit] = {}
    jobs: list[_Job] = []
    for dataset, split in requests:
        source = open_split(dataset, split, data_root=data_root, **(source_options or {}))
        cache = split_cache(Path(cache_root), spec, dataset, source, options.shard_size)
        ensure_writable(cache.directory)
        done = cache.load()
        if done is not None:
            done.reused = True
            results[(dataset, split)] = done
            continue
        present = cache.valid_shards(len(source))
        missing = [r for r in cache.plan(len(source)) if r not in present]
        jobs.append(_Job(dataset, source, cache, missing, len(present)))
    if not jobs:
        return results
    t0 = time.time()
    corrupt = _run_pipeline(jobs, spec, options, address) if any(j.missing for j in jobs) else []
    if corrupt and options.on_corrupt == "fail":
        raise CorruptImagesError(corrupt)
    for job in jobs:
        results[(job.dataset, job.source.split)] = _consolidate(
            job.cache, job.source, spec, job.dataset, options, time.time() - t0, job.resumed_shards)
    return results


def embed_split(dataset: str, split: str, encoder: str | EncoderSpec = "tiny-clip",
                cache_root: Path | str = DEFAULT_CACHE, options: EmbedOptions | None = None,
                data_root: str | None = None, source_options: dict | None = None,
                address: str | None = None) -> CachedSplit:
    """Embed one split; see :func:`embed_splits`."""
    return embed_splits([(dataset, split)], encoder, cache_root, options, data_root, source_options,
                        address)[(dataset, split)]


def _run_pipeline(jobs: list[_Job], spec: EncoderSpec, options: EmbedOptions, address: str | None) -> list[str]:
    """Embed every job's missing ranges: Ray Data decodes, the encoder pool embeds, each shard is written as it fills.

    Returns the locations of the images that could not be decoded.
    """
    import ray.data

    from .encoder_pool import PoolShape, encoder_pool
    from .ray_runtime import cluster_cpus, cluster_gpus, ensure_ray

    ensure_ray(address)
    gpus = cluster_gpus()
    actors = options.num_actors or (int(gpus) if gpus >= 1 else 1)
    rows = np.concatenate([
        np.stack([np.full(e - s, j, np.int64), np.arange(s, e, dtype=np.int64)], axis=1)
        for j, job in enumerate(jobs) for s, e in job.missing
    ])
    blocks = max(1, min(len(rows) // options.batch_size, 200))
    decoded = ray.data.from_numpy(np.array_split(rows, blocks)).map_batches(
        _decode_batch, fn_kwargs={"sources": [j.source for j in jobs], "pixels_of": PixelTransform.of(spec)},
        batch_size=options.batch_size, num_cpus=options.decode_cpus)
    threads = None if gpus >= 1 else (options.threads_per_actor or max(1, int(cluster_cpus() // (2 * actors))))
    shape = PoolShape(spec, actors, options.device, threads, 1 if gpus >= 1 else 0)
    shards = _ShardWriter(jobs, options)
    with encoder_pool(shape) as pool:
        for batch in pool.encode_blocks(decoded.iter_internal_ref_bundles()):
            shards.add(batch)
    return shards.corrupt


class _ShardWriter:
    """Sorts embedded rows into their jobs' missing index ranges and writes each range's shard once it is full."""

    def __init__(self, jobs: list[_Job], options: EmbedOptions):
        self.jobs, self.options = jobs, options
        self.buckets = {(j, r): {"index": [], "embedding": [], "skipped": []}
                        for j, job in enumerate(jobs) for r in job.missing}
        self.starts = {j: np.array([s for s, _ in job.missing]) for j, job in enumerate(jobs)}
        self.corrupt: list[str] = []

    def add(self, batch: dict) -> None:
        for j in np.unique(batch["job"]):
            job = self.jobs[int(j)]
            in_job = batch["job"] == j
            owner = np.searchsorted(self.starts[int(j)], batch["index"], side="right") - 1
            for k in np.unique(owner[in_job]):
                self._file(int(j), job.missing[int(k)], batch, in_job & (owner == k))

    def _file(self, j: int, rng: tuple[int, int], batch: dict, rows: np.ndarray) -> None:
        ok = rows & (batch["error"] == "")
        bad = rows & (batch["error"] != "")
        bucket = self.buckets[(j, rng)]
        bucket["index"].append(batch["index"][ok])
        bucket["embedding"].append(batch["embedding"][ok])
        bucket["skipped"].extend(int(i) for i in batch["index"][bad])
        self.corrupt.extend(str(e) for e in batch["error"][bad])
        filled = sum(len(a) for a in bucket["index"]) + len(bucket["skipped"])
        if filled == rng[1] - rng[0] and (not bucket["skipped"] or self.options.on_corrupt == "skip"):
            _write_shard(self.jobs[j].cache.shard_path(*rng), bucket, self.options.dtype)


def _write_shard(path: Path, bucket: dict, dtype: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    index = np.concatenate(bucket["index"]) if bucket["index"] else np.empty(0, np.int64)
    emb = np.concatenate(bucket["embedding"]) if bucket["embedding"] else np.empty((0, 1), np.float32)
    order = np.argsort(index)
    index, emb = index[order], emb[order].astype(dtype)
    flat = pa.array(emb.reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]) if len(index) else pa.array([], pa.list_(pa.float32()))
    table = pa.table({"index": pa.array(index), "embedding": column})
    table = table.replace_schema_metadata({"skipped": json.dumps(sorted(bucket["skipped"]))})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _consolidate(cache: SplitCache, source, spec: EncoderSpec, dataset: str, options: EmbedOptions,
                 seconds: float, resumed_shards: int) -> CachedSplit:
    """Stitch the shards into memory-mappable arrays and write the manifest last."""
    import pyarrow.parquet as pq

    n = len(source)
    shards = cache.valid_shards(n)
    missing = [r for r in cache.plan(n) if r not in shards]
    if missing:
        raise RuntimeError(f"cache {cache.directory} still misses index ranges {missing[:5]}; rerun to complete it")
    tables = [pq.read_table(shards[r]) for r in cache.plan(n)]
    skipped = sorted(i for t in tables for i in json.loads((t.schema.metadata or {}).get(b"skipped", b"[]")))
    count = sum(t.num_rows for t in tables)
    if count == 0:
        raise ValueError(f"{dataset}/{source.split}: no image could be embedded ({len(skipped)} skipped)")
    dim = next(len(t.column("embedding")[0]) for t in tables if t.num_rows)
    feat_path = cache.directory / "features.npy"
    tmp = cache.directory / ".features.npy.tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=options.dtype, shape=(count, dim))
    indices = np.empty(count, dtype=np.int64)
    row = 0
    for t in tables:
        k = t.num_rows
        if k:
            out[row: row + k] = np.asarray(t.column("embedding").combine_chunks().flatten()).reshape(k, dim)
            indices[row: row + k] = t.column("index").to_numpy()
        row += k
    out.flush()
    del out
    os.replace(tmp, feat_path)
    np.save(cache.directory / "indices.npy", indices)
    np.save(cache.directory / "labels.npy", source.labels[indices])
    manifest = {
        "version": MANIFEST_VERSION, "dataset": dataset, "split": source.split, "source": source.identity(),
        "encoder": {"name": spec.name, "key": spec.key, "model": spec.model, "precision": spec.precision},
        "preprocess": repr(build_preprocess(spec)), "count": count, "dim": dim, "dtype": options.dtype,
        "skipped": skipped, "checksum": file_checksum(feat_path), "seconds": round(seconds, 2),
        "resumed_shards": resumed_shards, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _atomic_write_bytes(cache.manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    done = cache.load()
    assert done is not None
    return done


def verify(split: CachedSplit) -> bool:
    """Full checksum check of a cache (slow at ImageNet scale; the loader checks shapes only)."""
    return file_checksum(split.directory / "features.npy") == split.manifest["checksum"]


# ---------------------------------------------------------------- text side


def embed_class_texts(dataset: str, encoder: str | EncoderSpec = "tiny-clip", cache_root: Path | str = DEFAULT_CACHE,
                      protocol: str = "default", address: str | None = None,
                      templates: list[str] | None = None) -> dict:
    """Normalised text embeddings of every class x template, cached as ``(T, C, D)``.

    ``templates`` replaces the protocol's (a multi-label card's negative prompts); the cache file is keyed
    by the templates themselves, so the two never share one.
    """
    from datasets.registry import get_card

    spec = parse_encoder(encoder) if isinstance(encoder, str) else encoder
    card = get_card(dataset)
    templates = list(templates) if templates else card.prompts(protocol)
    directory = Path(cache_root) / spec.key / dataset / "text"
    path = directory / f"{protocol}-{_digest([card.classes, templates])}.npz"
    ensure_writable(directory)
    if path.exists():
        with np.load(path) as z:
            return {"embeddings": z["embeddings"], "classes": card.classes, "templates": templates, "reused": True}
    texts = [t.format(c) for t in templates for c in card.classes]
    emb = _run_text_task(spec, texts, address)
    emb = emb.reshape(len(templates), len(card.classes), -1).astype(np.float32)
    buf = _npz_bytes(embeddings=emb)
    _atomic_write_bytes(path, buf)
    return {"embeddings": emb, "classes": card.classes, "templates": templates, "reused": False}


def _run_text_task(spec: EncoderSpec, texts: list[str], address: str | None) -> np.ndarray:
    """Class texts through the open session's encoder pool when there is one, else through a pool of one actor."""
    from .encoder_pool import encoder_pool, text_pool_shape
    from .ray_runtime import cluster_gpus, ensure_ray

    ensure_ray(address)
    with encoder_pool(text_pool_shape(spec, 1 if cluster_gpus() >= 1 else 0)) as pool:
        return pool.encode_texts(texts)


def _npz_bytes(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
