"""A local black-box foundation model: an open_clip model's zero-shot head behind ``query``.

Black-box methods (VALIANT, BAPS) may only see output distributions, and
every image they ask about costs a query. :class:`ClipBlackBox` enforces
that on a model that runs here: it answers ``query(pixels)`` with the
template-ensemble zero-shot distribution and keeps no other door open (no
features, gradients or weights). The spec is what travels to Ray tasks; the
model is loaded in the task that opens it, once per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..base import BlackBox


@dataclass(frozen=True)
class ClipBlackBoxSpec:
    """What a trial needs to open the black box: the model, the task's class prompts, the temperature."""

    encoder: str
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    temperature: float = 0.01
    precision: str = "fp32"
    device: str | None = field(default=None, compare=False)
    # A multi-label task: each label answered by the softmax over its positive and negative prompt,
    # sigmoid((f·t+ − f·t−)/T), from these templates (the card's negative_templates).
    negative_templates: tuple[str, ...] = ()

    def open(self) -> "ClipBlackBox":
        """A fresh handle with its own query counter."""
        return ClipBlackBox(self)


@lru_cache(maxsize=2)
def _zero_shot_head(spec: ClipBlackBoxSpec):
    """The frozen encoder and its (C, D) template-ensemble classifier, built once per process."""
    import torch

    from .devices import pick_device
    from .encoders import load_encoder

    encoder = load_encoder(spec.encoder, spec.precision, pick_device(spec.device))

    def ensemble(templates):
        texts = [t.format(c) for c in spec.class_names for t in templates]
        emb = encoder.encode_texts(texts).reshape(len(spec.class_names), len(templates), -1).mean(1)
        return torch.nn.functional.normalize(emb, dim=-1).to(encoder.device)

    head = ensemble(spec.templates)
    return encoder, head - ensemble(spec.negative_templates) if spec.negative_templates else head


class ClipBlackBox(BlackBox):
    """Zero-shot distributions over the task's classes, and a count of every image asked about."""

    def __init__(self, spec: ClipBlackBoxSpec):
        self._spec = spec
        self.queries = 0

    def query(self, pixels) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        encoder, classifier = _zero_shot_head(self._spec)
        pixels = torch.as_tensor(pixels, dtype=torch.float32)
        self.check_images(pixels.shape)
        self.queries += len(pixels)
        size = encoder.image_size
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        logits = encoder.encode_images(pixels).to(classifier.device) @ classifier.T / self._spec.temperature
        answer = torch.sigmoid(logits) if self._spec.negative_templates else torch.softmax(logits, dim=-1)
        return answer.cpu().numpy()


# ------------------------------------------------------------------ the same black box over HTTP


def _npy(array) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _from_npy(data: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(data), allow_pickle=False)


@dataclass(frozen=True)
class ServedBlackBoxSpec:
    """A black box behind an HTTP endpoint: ``POST {url}/{dataset}`` with an ``.npy`` batch of preprocessed
    images answers an ``.npy`` (n, C) array; ``GET`` answers the server's own count, ``{"queries": n}``.
    ``orchestrator/serving.py`` serves any :class:`ClipBlackBoxSpec` that way with Ray Serve."""

    url: str
    dataset: str
    num_classes: int
    timeout: float = 120.0

    @property
    def endpoint(self) -> str:
        return f"{self.url.rstrip('/')}/{self.dataset}"

    def open(self) -> "ServedBlackBox":
        return ServedBlackBox(self)


class BlackBoxUnreachable(ConnectionError):
    """The served black box did not answer; the trial fails and its retry resumes from the last finished round."""


class ServedBlackBox(BlackBox):
    """The client side: distributions only, every image counted here as the server counts it there."""

    def __init__(self, spec: ServedBlackBoxSpec):
        self._spec = spec
        self.queries = 0

    def query(self, pixels) -> np.ndarray:
        import urllib.error
        import urllib.request

        batch = np.asarray(pixels, dtype=np.float32)
        self.check_images(batch.shape)
        request = urllib.request.Request(self._spec.endpoint, data=_npy(batch), method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(request, timeout=self._spec.timeout) as response:
                answer = _from_npy(response.read())
        except urllib.error.HTTPError as exc:  # it answered, with an error
            detail = exc.read().decode(errors="replace")[:500]
            if exc.code == 400:
                raise ValueError(f"the black box at {self._spec.endpoint} refused the batch: {detail}") from None
            raise BlackBoxUnreachable(f"the black box at {self._spec.endpoint} failed (HTTP {exc.code}: {detail}); "
                                      "the trial fails now and its retry resumes from its last finished round") \
                from None
        except (urllib.error.URLError, OSError) as exc:
            raise BlackBoxUnreachable(
                f"the black box at {self._spec.endpoint} did not answer ({exc}); is the endpoint up (for one "
                "served by the sweep: `serve status`)? The trial fails now and its retry resumes from its last "
                "finished round") from None
        if answer.shape != (len(batch), self._spec.num_classes):
            raise ValueError(f"the black box at {self._spec.endpoint} answered shape {answer.shape} for "
                             f"{len(batch)} images of a {self._spec.num_classes}-class task")
        self.queries += len(batch)
        return answer


def served_queries(url: str, dataset: str, timeout: float = 30.0) -> int:
    """The server's own count of the images it was asked about for ``dataset``."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url.rstrip('/')}/{dataset}", timeout=timeout) as response:
        return int(json.loads(response.read())["queries"])
