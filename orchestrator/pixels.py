"""The encoder's evaluation transform as the stages that decode images apply it.

Decode tasks used to receive the torchvision transform itself, and unpickling
it imported torch and torchvision in every decode worker process (about
3 CPU-seconds each, a large share of a cold embed call on a small node). A
:class:`PixelTransform` travels as the encoder spec, the output shape and, when
it holds, the transform's closed form, and builds the torchvision transform
only in a process that needs it.

The closed form: for images already at the model's input size, the resize and
centre crop of an open_clip evaluation transform are identities, so the whole
transform is ``(x / 255 - mean) / std``. Whether that holds is checked once,
in the driver, on a random image of that size against the real transform (any
resampling, crop offset or extra step would change random pixels); images of
any other size go through the real transform.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from methods.core.encoders import EncoderSpec, build_preprocess

CLOSED_FORM_ATOL = 1e-6


@dataclass
class PixelTransform:
    spec: EncoderSpec
    shape: tuple[int, ...]  # (3, H, W) of one transformed image
    normalise: tuple[np.ndarray, np.ndarray] | None  # (mean, std) as (1, 3, 1, 1) when the closed form holds
    _transform: object = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, spec: EncoderSpec) -> "PixelTransform":
        from PIL import Image

        transform = build_preprocess(spec)
        shape = tuple(transform(Image.new("RGB", (64, 64))).shape)
        normalise = _normalise_constants(transform)
        if normalise is not None and not _closed_form_holds(transform, normalise, shape):
            normalise = None
        return cls(spec, shape, normalise, transform)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_transform"] = None  # rebuilt, with its torch import, only where an image needs it
        return state

    @property
    def transform(self):
        if self._transform is None:
            self._transform = build_preprocess(self.spec)
        return self._transform

    def uint8_batch(self, images: np.ndarray) -> np.ndarray:
        """``(n, 3, H, W)`` float32 model input for an ``(n, h, w, 3)`` uint8 batch."""
        from PIL import Image

        if self.normalise is not None and images.shape[1:3] == tuple(self.shape[1:]):
            mean, std = self.normalise
            return (images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
        return np.stack([self.image(Image.fromarray(a)) for a in images])

    def image(self, image) -> np.ndarray:
        """``(3, H, W)`` float32 model input for one PIL image."""
        return self.transform(image).numpy()


def _normalise_constants(transform) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) of the transform's Normalize step, or None if it has none."""
    from torchvision.transforms import Normalize

    for t in getattr(transform, "transforms", []):
        if isinstance(t, Normalize):
            return np.asarray(t.mean, np.float32).reshape(1, 3, 1, 1), np.asarray(t.std, np.float32).reshape(1, 3, 1, 1)
    return None


def _closed_form_holds(transform, normalise: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...]) -> bool:
    from PIL import Image

    probe = np.random.default_rng(0).integers(0, 256, (1, *shape[1:], 3), dtype=np.uint8)
    mean, std = normalise
    closed = (probe.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
    real = transform(Image.fromarray(probe[0])).numpy()
    return real.shape == closed.shape[1:] and bool(np.allclose(closed[0], real, atol=CLOSED_FORM_ATOL))
