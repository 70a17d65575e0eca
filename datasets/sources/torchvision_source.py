"""torchvision datasets as image sources, without torchvision's surprises.

torchvision's dataset classes know each archive's layout and official
splits, which is why they are worth wrapping; but they decode through their
own ``__getitem__``, may download when asked, sometimes create folders, and
fail with a bare ``RuntimeError``. This source therefore

* checks the expected folder itself before touching torchvision, so a
  missing dataset fails fast (no network, no folders created) with a
  :class:`DatasetNotFoundError` naming the path and how to get the data;
* reads labels from the dataset object's own target lists (``_labels``,
  ``targets``, ``y``, ``_samples`` ...), never by decoding images;
* keeps plain file paths and loads pixels with :func:`open_rgb`, so a broken
  file raises :class:`CorruptImageError` with its path;
* drops the torchvision object when pickled (it travels to Ray workers) and
  rebuilds it lazily where pixels live in memory (CIFAR) or in HDF5 (PCam).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import (CorruptImageError, DatasetNotFoundError, ImageSource, LabelMismatchError, default_data_root,
                   open_rgb)
from .registry import register_source


@dataclass(frozen=True)
class _Spec:
    """What this module knows about one torchvision dataset class."""

    folder: str  # relative to root; {split} is filled with the torchvision split value
    split_arg: str | None  # constructor argument selecting the split, None when there is no split
    split_values: tuple = ()
    kwargs: dict = field(default_factory=dict)
    downloadable: bool = True
    manual: str = ""


_SPECS: dict[str, _Spec] = {
    "EuroSAT": _Spec("eurosat/2750", None,
                     manual="download EuroSAT.zip (RGB) and extract it so that "
                            "<root>/eurosat/2750/<Class>/*.jpg exist"),
    "DTD": _Spec("dtd/dtd", "split", ("train", "val", "test"), {"partition": 1},
                 manual="extract dtd-r1.0.1.tar.gz into <root>/dtd/ (giving <root>/dtd/dtd/images and labels)"),
    "Flowers102": _Spec("flowers-102", "split", ("train", "val", "test"),
                        manual="put 102flowers.tgz extracted (jpg/), imagelabels.mat and setid.mat in "
                               "<root>/flowers-102/"),
    "OxfordIIITPet": _Spec("oxford-iiit-pet", "split", ("trainval", "test"), {"target_types": "category"},
                           manual="extract images.tar.gz and annotations.tar.gz into <root>/oxford-iiit-pet/"),
    "Caltech101": _Spec("caltech101/101_ObjectCategories", None, (), {"target_type": "category"},
                        manual="extract 101_ObjectCategories.tar.gz into <root>/caltech101/"),
    "FGVCAircraft": _Spec("fgvc-aircraft-2013b", "split", ("train", "val", "trainval", "test"),
                          {"annotation_level": "variant"},
                          manual="extract fgvc-aircraft-2013b.tar.gz into <root>/ "
                                 "(giving <root>/fgvc-aircraft-2013b/data)"),
    "StanfordCars": _Spec("stanford_cars", "split", ("train", "test"), downloadable=False,
                          manual="the original URL is gone: obtain cars_train/, cars_test/, devkit/ and "
                                 "cars_test_annos_withlabels.mat (e.g. from a Kaggle mirror) and place them in "
                                 "<root>/stanford_cars/"),
    "Food101": _Spec("food-101", "split", ("train", "test"),
                     manual="extract food-101.tar.gz into <root>/ (giving <root>/food-101/images and meta)"),
    "CIFAR10": _Spec("cifar-10-batches-py", "train", (True, False),
                     manual="extract cifar-10-python.tar.gz into <root>/"),
    "CIFAR100": _Spec("cifar-100-python", "train", (True, False),
                      manual="extract cifar-100-python.tar.gz into <root>/"),
    "PCAM": _Spec("pcam/camelyonpatch_level_2_split_{split}_x.h5", "split", ("train", "val", "test"),
                  manual="put camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5 (gunzipped) in <root>/pcam/ "
                         "and `pip install h5py`"),
}

#: PCam's files say "valid" where torchvision says "val".
_PCAM_FILE_SPLIT = {"train": "train", "val": "valid", "test": "test"}


def _labels_and_files(ds: Any, name: str) -> tuple[list[int], list[str] | None]:
    """Labels from the dataset's target list, and file paths when pixels live in files."""
    if name == "Caltech101":  # paths are rebuilt from category and per-category image number
        base = Path(ds.root) / "101_ObjectCategories"
        files = [str(base / ds.categories[y] / f"image_{i:04d}.jpg") for y, i in zip(ds.y, ds.index)]
        return list(ds.y), files
    for attr in ("_samples", "samples", "imgs"):  # (path, label) pairs: StanfordCars, ImageFolder subclasses
        pairs = getattr(ds, attr, None)
        if pairs is not None and len(pairs) and isinstance(pairs[0], (tuple, list)):
            return [int(p[1]) for p in pairs], [str(p[0]) for p in pairs]
    labels = None
    for attr in ("_labels", "targets", "labels", "y"):
        value = getattr(ds, attr, None)
        if value is not None and not callable(value):
            labels = [int(v) for v in np.asarray(value).reshape(len(value), -1)[:, 0]]
            break
    files = None
    for attr in ("_image_files", "_images", "image_files"):
        value = getattr(ds, attr, None)
        if value is not None:
            files = [str(p) for p in value]
            break
    if labels is None:
        raise LabelMismatchError(
            f"torchvision.datasets.{name}: no target list found (_labels, targets, y, _samples); labels would "
            f"need every image decoded, which this source refuses to do; add a spec in {__name__}"
        )
    return labels, files


@register_source("torchvision")
class TorchvisionSource(ImageSource):
    """One split of a ``torchvision.datasets`` class.

    Options: ``dataset`` (class name), ``splits`` (card split -> torchvision
    split value; default: the card split itself), ``subdir`` (joined to the
    data root), ``dataset_kwargs`` (extra constructor arguments), ``download``
    (default False: only when the user asks for it).
    """

    def __init__(self, classes: list[str], split: str, dataset: str, splits: dict | None = None,
                 subdir: str = "", dataset_kwargs: dict | None = None, download: bool = False, root=None):
        super().__init__(classes, split)
        import torchvision.datasets as tvd

        if not hasattr(tvd, dataset):
            raise KeyError(f"torchvision.datasets has no {dataset!r}; known here: {sorted(_SPECS)}")
        self.dataset = dataset
        self.spec = _SPECS.get(dataset, _Spec("", "split"))  # unknown layout: torchvision's own check only
        self.root = (Path(root) if root is not None else default_data_root()).expanduser() / subdir
        self.tv_split = (splits or {}).get(split, split)
        self.kwargs = {**self.spec.kwargs, **(dataset_kwargs or {})}
        self.download = bool(download)
        self._check_split()
        expected = self.expected_path()
        if dataset in _SPECS and not self.download and not expected.exists():
            raise DatasetNotFoundError(self._how_to_obtain(expected, "does not exist"))
        if dataset == "PCAM":  # labels straight from the HDF5 target file; no torchvision object needed
            ds = self._build() if self.download else None
            labels, files = self._pcam_labels(), None
        else:
            ds = self._build()
            labels, files = _labels_and_files(ds, dataset)
        self._labels = np.asarray(labels, dtype=np.int64)
        self.files = files
        self._check_class_count(ds)
        # Pixels in plain files need nothing else; in-memory ones (CIFAR) keep the object in this process.
        self._ds = ds if files is None and dataset != "PCAM" else None

    # -------------------------------------------------------------- building

    def _check_split(self) -> None:
        if self.spec.split_arg is None:
            if self.tv_split not in (None, "all"):  # never hand out the whole set as "train" and as "test"
                raise KeyError(f"torchvision.datasets.{self.dataset} has no splits: only the whole dataset, as a "
                               f"card split named 'all' or mapped to 'all' (option `splits`), can be read; "
                               f"card split {self.split!r} maps to {self.tv_split!r}")
            return
        if self.spec.split_values and self.tv_split not in self.spec.split_values:
            raise KeyError(
                f"card split {self.split!r} maps to torchvision split {self.tv_split!r}, which "
                f"torchvision.datasets.{self.dataset} does not have; valid: {list(self.spec.split_values)}. "
                f"Set the source option `splits` (card split -> torchvision split)."
            )

    def expected_path(self) -> Path:
        file_split = _PCAM_FILE_SPLIT.get(self.tv_split, self.tv_split) if self.dataset == "PCAM" else self.tv_split
        return self.root / self.spec.folder.format(split=file_split)

    def _how_to_obtain(self, path: Path, problem: str) -> str:
        manual = self.spec.manual.replace("<root>", str(self.root)) or f"place the data under {self.root}"
        auto = (f"let torchvision fetch it by passing download=True (e.g. open_split(<dataset>, {self.split!r}, "
                f"download=True), which calls torchvision.datasets.{self.dataset}(root='{self.root}', download=True)); "
                f"or, manually: " if self.spec.downloadable else "torchvision cannot download it; manually: ")
        return f"torchvision.datasets.{self.dataset} data {problem}: looked for {path}. To obtain it, {auto}{manual}."

    def _build(self):
        import torchvision.datasets as tvd

        args = dict(self.kwargs)
        if self.spec.split_arg is not None:
            args[self.spec.split_arg] = self.tv_split
        try:
            return getattr(tvd, self.dataset)(root=str(self.root), download=self.download, **args)
        except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
            msg = f"is missing or incomplete ({exc})"
            raise DatasetNotFoundError(self._how_to_obtain(self.expected_path(), msg)) from None

    def _pcam_labels(self) -> list[int]:
        targets = Path(str(self.expected_path()).replace("_x.h5", "_y.h5"))
        if not targets.exists():
            raise DatasetNotFoundError(self._how_to_obtain(targets, "does not exist"))
        try:
            import h5py
        except ImportError:
            raise ImportError("PCam is stored as HDF5: `pip install h5py` to read it") from None
        with h5py.File(targets, "r") as f:
            return [int(v) for v in np.asarray(f["y"]).reshape(-1)]

    def _dataset(self):
        if self._ds is None:
            self._ds = self._build()
        return self._ds

    def _check_class_count(self, ds) -> None:
        names = getattr(ds, "classes", None) or getattr(ds, "categories", None)
        if self.dataset == "PCAM":
            names = ["no metastatic tissue", "metastatic tissue"]
        found = len(names) if names is not None else int(self._labels.max(initial=-1)) + 1
        if found != len(self.classes):
            sample = f" (torchvision's: {list(names)[:5]}...)" if names is not None else ""
            raise LabelMismatchError(
                f"the card lists {len(self.classes)} classes ({self.classes[:5]}...) but "
                f"torchvision.datasets.{self.dataset} under {self.root} has {found}{sample}. The card follows a "
                f"different published class list than torchvision (see the card's class_source, e.g. CoOp's split "
                f"files); read this dataset with the source the card's class list comes from."
            )

    # -------------------------------------------------------------- interface

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def locate(self, index: int) -> str:
        if self.files is not None:
            return self.files[index]
        return f"{self.expected_path()}[{index}]"

    def load(self, index: int) -> Image.Image:
        if self.files is not None:
            return open_rgb(self.files[index])
        try:
            if self.dataset == "PCAM":
                return self._load_pcam(index)
            return Image.fromarray(np.asarray(self._dataset().data[index])).convert("RGB")
        except (IndexError, KeyError):
            raise
        except Exception as exc:
            raise CorruptImageError(self.locate(index), f"{type(exc).__name__}: {exc}") from exc

    def _load_pcam(self, index: int) -> Image.Image:
        import h5py

        if getattr(self, "_h5", None) is None:
            self._h5 = h5py.File(self.expected_path(), "r")
        return Image.fromarray(np.asarray(self._h5["x"][index])).convert("RGB")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_ds"] = None  # rebuilt lazily on the worker
        state["_h5"] = None
        return state

    def identity(self) -> dict:
        h = hashlib.sha256(self._labels.tobytes())
        for f in self.files or ():
            h.update(Path(f).name.encode())
        return {"kind": "torchvision", "dataset": self.dataset, "split": self.split, "tv_split": self.tv_split,
                "kwargs": self.kwargs, "n": len(self), "items": h.hexdigest()[:16]}
