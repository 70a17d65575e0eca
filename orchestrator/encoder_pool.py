"""Encoder actors that outlive one embed call.

Ray Data's ``ActorPoolStrategy`` starts its actors for one execution and kills
them at its end, so every ``embed_splits`` call paid a new worker process, the
torch and open_clip imports and the model load (most of the 10-13 s start-up
the README measured on a CPU node), and the class texts paid it once more in a
task of their own. An :class:`EncoderPool` starts its actors once and serves
every call made inside one :func:`encoder_session` block: several datasets and
splits, the class texts, a benchmark's repeated runs. Outside a session each
call opens and closes a pool of its own, as before, so no idle actor keeps a
CPU or a GPU that Tune trials are waiting for.

Decoding stays a Ray Data stage (CPU tasks, streamed and backpressured). The
driver hands each decoded block's object reference to the least busy actor,
so pixels travel from the object store to the actor without passing through
the driver, and it keeps at most ``in_flight`` blocks per actor outstanding,
which bounds how far decoding runs ahead of encoding while keeping both busy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from methods.core.encoders import EncoderSpec

RESTARTS = 3  # a killed actor is restarted and its pending blocks are retried, this many times


class EncoderWorker:
    """One frozen encoder held for the actor's lifetime; encodes decoded blocks and class texts."""

    def __init__(self, spec: EncoderSpec, device: str | None = None, threads: int | None = None):
        import torch

        from methods.core.encoders import FrozenEncoder

        if threads:  # CPU actors: Ray pins one thread per requested CPU; the encoder may use the node's cores
            torch.set_num_threads(threads)
        self.encoder = FrozenEncoder(spec, device)
        size = self.encoder.image_size
        self.dim = int(self.encoder.encode_images(torch.zeros(1, 3, size, size)).shape[1])

    def encode_block(self, block, start: int | None = None, stop: int | None = None) -> dict:
        """Embeddings of one decoded block (rows ``start:stop`` of it when Ray Data hands out a slice)."""
        from ray.data.block import BlockAccessor

        accessor = BlockAccessor.for_block(block)
        if start is not None:
            accessor = BlockAccessor.for_block(accessor.slice(start, stop, copy=False))
        return self.encode_batch(accessor.to_batch_format("numpy"))

    def encode_batch(self, batch: dict) -> dict:
        import torch

        ok = batch["error"] == ""
        out = np.zeros((len(ok), self.dim), dtype=np.float32)
        if ok.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok], dtype=np.float32))
            out[ok] = self.encoder.encode_images(pixels).numpy()
        return {"job": batch["job"], "index": batch["index"], "embedding": out, "error": batch["error"]}

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode_texts(texts).numpy()


@dataclass(frozen=True)
class PoolShape:
    """What a pool is started with; calls that ask for the same shape share it within a session."""

    spec: EncoderSpec
    size: int = 1
    device: str | None = None
    threads: int | None = None
    gpus_per_actor: int = 0


@dataclass
class EncoderPool:
    actors: list = field(default_factory=list)
    job_id: str = ""  # the Ray job the actors belong to

    @classmethod
    def start(cls, shape: PoolShape) -> "EncoderPool":
        import ray

        remote = ray.remote(EncoderWorker).options(
            num_cpus=1, num_gpus=shape.gpus_per_actor, max_restarts=RESTARTS, max_task_retries=RESTARTS)
        actors = [remote.remote(shape.spec, shape.device, shape.threads) for _ in range(shape.size)]
        return cls(actors, ray.get_runtime_context().get_job_id())

    def usable(self) -> bool:
        """False once Ray was shut down or re-initialised under the pool (its actors are gone)."""
        import ray

        return bool(self.actors) and ray.is_initialized() and ray.get_runtime_context().get_job_id() == self.job_id

    def encode_blocks(self, bundles: Iterable, in_flight: int = 2) -> Iterator[dict]:
        """Embedded batches, in completion order, for every block of a stream of Ray Data ``RefBundle``s."""
        import ray

        pending: dict = {}  # result ref -> actor index
        load = [0] * len(self.actors)

        def collect(wait_for_all: bool) -> Iterator[dict]:
            while pending and (wait_for_all or len(pending) >= len(self.actors) * in_flight):
                done, _ = ray.wait(list(pending), num_returns=1)
                load[pending.pop(done[0])] -= 1
                yield ray.get(done[0])

        for bundle in bundles:
            for entry, piece in zip(bundle.blocks, bundle.slices):
                yield from collect(wait_for_all=False)
                k = int(np.argmin(load))
                bounds = (piece.start_offset, piece.end_offset) if piece is not None else (None, None)
                pending[self.actors[k].encode_block.remote(entry.ref, *bounds)] = k
                load[k] += 1
        yield from collect(wait_for_all=True)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import ray

        return ray.get(self.actors[0].encode_texts.remote(texts))

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            for actor in self.actors:
                ray.kill(actor)
        self.actors = []


_session: dict[PoolShape, EncoderPool] | None = None  # this driver process's open session, if any


@contextmanager
def encoder_session() -> Iterator[None]:
    """Keep every encoder pool started inside the block alive until the block ends (nested blocks join the outer)."""
    global _session
    if _session is not None:
        yield
        return
    _session = {}
    try:
        yield
    finally:
        pools, _session = _session, None
        for pool in pools.values():
            pool.close()


@contextmanager
def encoder_pool(shape: PoolShape) -> Iterator[EncoderPool]:
    """The session's pool of this shape (started on first use), or, outside a session, one for this call alone."""
    if _session is None:
        pool = EncoderPool.start(shape)
        try:
            yield pool
        finally:
            pool.close()
        return
    pool = _session.get(shape)
    if pool is None or not pool.usable():
        pool = _session[shape] = EncoderPool.start(shape)
    try:
        yield pool
    except BaseException:  # a failed call may leave dead or busy actors: the session's next call starts afresh
        _session.pop(shape, None)
        pool.close()
        raise


def text_pool_shape(spec: EncoderSpec, gpus_per_actor: int) -> PoolShape:
    """The shape the class texts use: an open session's pool of the same encoder when there is one."""
    for shape, pool in (_session or {}).items():
        if shape.spec == spec and pool.usable():
            return shape
    return PoolShape(spec, gpus_per_actor=gpus_per_actor)
