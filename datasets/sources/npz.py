"""MedMNIST-style ``.npz`` files: ``{split}_images`` and ``{split}_labels`` arrays.

Images are ``(N, H, W)`` grayscale or ``(N, H, W, 3)`` RGB uint8; labels are
``(N, 1)`` class ids or ``(N, C)`` 0/1 (multi-label, e.g. ChestMNIST).
Only the labels are read up front. The image array is read on first use in
each process and never pickled; when the member is stored uncompressed it is
memory-mapped instead, so a 224-pixel MedMNIST+ file does not have to fit in
every Ray worker's memory.
"""

from __future__ import annotations

import hashlib
import struct
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .base import CorruptImageError, DatasetNotFoundError, ImageSource, LabelMismatchError, default_data_root
from .registry import register_source


def _member_header(path: Path, member: str) -> tuple[tuple, np.dtype, bool, int | None]:
    """Shape, dtype, order and (for stored members) the byte offset of an array inside an .npz."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(f)
            header_len = f.tell()
    if info.compress_type != zipfile.ZIP_STORED:
        return shape, dtype, fortran, None
    with open(path, "rb") as raw:  # local file header: fixed 30 bytes + name + extra field
        raw.seek(info.header_offset)
        name_len, extra_len = struct.unpack("<HH", raw.read(30)[26:30])
    return shape, dtype, fortran, info.header_offset + 30 + name_len + extra_len + header_len


@register_source("npz")
class NpzSource(ImageSource):
    """Options: ``file`` (under the data root), ``split_keys`` (card split -> key prefix, default the
    split name), ``images_key`` / ``labels_key`` (patterns with ``{split}``)."""

    def __init__(self, classes: list[str], split: str, file: str, split_keys: dict | None = None,
                 images_key: str = "{split}_images", labels_key: str = "{split}_labels", root=None):
        super().__init__(classes, split)
        self.path = (Path(root) if root is not None else default_data_root()).expanduser() / file
        if not self.path.is_file():
            raise DatasetNotFoundError(
                f"npz file not found: looked for {self.path}. See the dataset card's source.obtain for how to get it."
            )
        prefix = (split_keys or {}).get(split, split)
        self.images_key, labels_name = images_key.format(split=prefix), labels_key.format(split=prefix)
        try:
            with np.load(self.path) as z:
                if self.images_key not in z.files or labels_name not in z.files:
                    raise KeyError(f"{self.path}: needs arrays {self.images_key!r} and {labels_name!r}; "
                                   f"it has {sorted(z.files)}")
                raw = np.asarray(z[labels_name])
            self.shape, self.dtype, self.fortran, self.offset = _member_header(self.path, self.images_key + ".npy")
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise CorruptImageError(str(self.path), f"unreadable npz: {type(exc).__name__}: {exc}") from exc
        self._labels = self._parse_labels(raw)
        if self.shape[0] != len(self._labels):
            raise LabelMismatchError(f"{self.path}: {self.shape[0]} images but {len(self._labels)} labels in {split!r}")
        if not (len(self.shape) == 3 or (len(self.shape) == 4 and self.shape[3] in (1, 3))):
            raise ValueError(f"{self.path}: {self.images_key} has shape {self.shape}; expected (N,H,W) or (N,H,W,3)")
        self._images = None

    def _parse_labels(self, raw: np.ndarray) -> np.ndarray:
        raw = raw.reshape(len(raw), -1) if raw.ndim > 1 else raw.reshape(-1, 1)
        if raw.shape[1] == 1:
            return raw[:, 0].astype(np.int64)
        if raw.shape[1] != len(self.classes):
            raise LabelMismatchError(
                f"{self.path}: label matrix has {raw.shape[1]} columns but the card lists {len(self.classes)} classes"
            )
        return (raw > 0).astype(np.int64)  # multi-label 0/1

    def _array(self) -> np.ndarray:
        if self._images is None:
            if self.offset is not None:
                order = "F" if self.fortran else "C"
                self._images = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape,
                                         offset=self.offset, order=order)
            else:
                with np.load(self.path) as z:
                    self._images = np.asarray(z[self.images_key])
        return self._images

    def render(self, indices) -> np.ndarray:
        """uint8 ``(n, H, W, 3)`` pixels: the batch fast path of the embedding pipeline."""
        block = np.asarray(self._array()[np.asarray(indices, dtype=np.int64)])
        if block.ndim == 3:
            block = block[..., None]
        if block.shape[-1] == 1:
            block = np.repeat(block, 3, axis=-1)
        return block.astype(np.uint8, copy=False)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def locate(self, index: int) -> str:
        return f"{self.path}:{self.images_key}[{index}]"

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.render([index])[0])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def identity(self) -> dict:
        h = hashlib.sha256(self._labels.tobytes())
        h.update(repr(self.shape).encode())
        return {"kind": "npz", "file": self.path.name, "split": self.split, "images_key": self.images_key,
                "n": len(self), "items": h.hexdigest()[:16]}
