"""``root/<split>/<class folder>/<image>``: the layout most datasets end up in.

The card's class list is the truth; folders are checked against it both ways
(a class without a folder, and a folder without a class, are both errors)
because a silently dropped or extra folder shifts every label id after it.
Folder names default to the class names; ``folder_names`` (aligned with the
classes, e.g. ImageNet wnids) or ``class_folders`` (class -> folder) map them
when they differ.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .base import DatasetNotFoundError, EmptySplitError, FileListSource, LabelMismatchError, default_data_root
from .registry import register_source

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _preview(names: list[str], limit: int = 20) -> str:
    more = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return f"{names[:limit]}{more}"


@register_source("imagefolder")
class ImageFolderSource(FileListSource):
    """Options: ``path`` (under the data root), ``split_dirs`` (card split -> folder, default the
    split name), ``folder_names`` or ``class_folders``, ``ignore_folders``, ``extensions``."""

    def __init__(self, classes: list[str], split: str, path: str = "", split_dirs: dict | None = None,
                 folder_names: list[str] | None = None, class_folders: dict | None = None,
                 ignore_folders: list[str] = (), extensions: list[str] | None = None, root=None):
        super().__init__(classes, split)
        base = (Path(root) if root is not None else default_data_root()).expanduser() / path
        self.split_dir = base / (split_dirs or {}).get(split, split)
        if not self.split_dir.is_dir():
            raise DatasetNotFoundError(
                f"image folder for split {split!r} not found: looked for {self.split_dir} (expected "
                f"{self.split_dir}/<class folder>/<image>). See the dataset card's source.obtain for how to get it."
            )
        self.folders = self._class_folders(folder_names, class_folders)
        present = sorted(e.name for e in os.scandir(self.split_dir) if e.is_dir() and not e.name.startswith("."))
        present_set, wanted = set(present), set(self.folders)
        missing = [f for f in self.folders if f not in present_set]
        if missing:
            raise LabelMismatchError(
                f"{self.split_dir}: {len(missing)} class folders of the card are missing: {_preview(missing)}. "
                f"Folders present: {_preview(present)}. Map class names to folders with the `folder_names` or "
                f"`class_folders` option if they differ."
            )
        extra = [f for f in present if f not in wanted and f not in set(ignore_folders)]
        if extra:
            raise LabelMismatchError(
                f"{self.split_dir}: {len(extra)} folders are not classes of the card: {_preview(extra)}. Remove "
                f"them, add them to the card, or list them in the `ignore_folders` option."
            )
        exts = tuple(e.lower() for e in (extensions or IMAGE_EXTENSIONS))
        self.files, labels = [], []
        for label, folder in enumerate(self.folders):
            names = sorted(e.name for e in os.scandir(self.split_dir / folder)
                           if e.is_file() and e.name.lower().endswith(exts) and not e.name.startswith("."))
            self.files.extend(str(self.split_dir / folder / n) for n in names)
            labels.extend([label] * len(names))
        if not self.files:
            raise EmptySplitError(
                f"split {split!r}: the class folders under {self.split_dir} hold no images with extensions {exts}"
            )
        self._labels = np.asarray(labels, dtype=np.int64)

    def _class_folders(self, folder_names, class_folders) -> list[str]:
        if folder_names is not None and class_folders is not None:
            raise ValueError("give either folder_names or class_folders, not both")
        if folder_names is not None:
            if len(folder_names) != len(self.classes):
                raise LabelMismatchError(
                    f"folder_names has {len(folder_names)} entries for the card's {len(self.classes)} classes"
                )
            return [str(f) for f in folder_names]
        if class_folders is not None:
            unknown = sorted(set(class_folders) - set(self.classes))
            if unknown:
                raise LabelMismatchError(f"class_folders names classes the card does not have: {_preview(unknown)}")
            return [str(class_folders.get(c, c)) for c in self.classes]
        return list(self.classes)

    def identity(self) -> dict:
        h = hashlib.sha256(self._labels.tobytes())
        cut = len(str(self.split_dir)) + 1  # hash paths relative to the split folder, not the data root
        for f in self.files:
            h.update(f[cut:].encode() + b"\0")
        return {"kind": "imagefolder", "split": self.split, "split_dir": self.split_dir.name, "n": len(self),
                "items": h.hexdigest()[:16]}
