"""Images listed in a table: CSV, parquet, or a CoOp/Dassl split JSON.

A manifest is the most general way to say "these files, these labels, this
split", and most published benchmark protocols ship one: CoOp's
``split_zhou_*.json`` and BiomedCoOp's ``split_*.json`` (``{split: [[path,
label, classname], ...]}``), CheXpert's ``train.csv`` (one column per
finding), NIH ChestX-ray14's ``Data_Entry_2017.csv`` (``|``-separated
findings), KaoKore's ``labels.csv``. The options below read those files as
they are distributed, so no conversion step can drift from the paper's split.

Labels are resolved against the card's class list: a class name (compared
case-insensitively, ``_`` as space) or an integer id. Rows that resolve to no
class fail loudly with a few examples and the known classes, never silently.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from .base import DatasetNotFoundError, EmptySplitError, FileListSource, LabelMismatchError, default_data_root
from .registry import register_source

_INT = re.compile(r"^[+-]?\d+(\.0*)?$")


def normalize_name(name: str) -> str:
    """How class names are compared: case-insensitive, underscores as spaces (CoOp folder names)."""
    return " ".join(str(name).replace("_", " ").lower().split())


class _ClassLookup:
    """Class name or integer id -> index in the card's class list."""

    def __init__(self, classes: list[str]):
        self.classes = classes
        self.exact = {c: i for i, c in enumerate(classes)}
        self.loose = {normalize_name(c): i for i, c in enumerate(classes)}

    def __call__(self, value) -> int | None:
        if isinstance(value, (int, np.integer)):
            return int(value) if 0 <= int(value) < len(self.classes) else None
        text = str(value).strip()
        if text in self.exact:
            return self.exact[text]
        if normalize_name(text) in self.loose:
            return self.loose[normalize_name(text)]
        if _INT.match(text):
            i = int(float(text))
            return i if 0 <= i < len(self.classes) else None
        return None

    def known(self) -> str:
        shown = ", ".join(repr(c) for c in self.classes[:20])
        more = f", ... ({len(self.classes)} in all)" if len(self.classes) > 20 else ""
        return f"[{shown}{more}] or integer ids 0..{len(self.classes) - 1}"


def _bad_rows(where: str, bad: list[tuple], lookup: _ClassLookup, what: str = "labels") -> LabelMismatchError:
    shown = "; ".join(f"row {r} ({p}): {v!r}" for r, p, v in bad[:5])
    return LabelMismatchError(
        f"{where}: {len(bad)} rows have {what} that are not classes of the card, e.g. {shown}. "
        f"Known classes: {lookup.known()}"
    )


@register_source("manifest")
class ManifestSource(FileListSource):
    """Options (all paths relative to the data root unless absolute):

    * ``file``: the table, or ``{card split: table}`` when each split has its own file.
    * ``image_root``: folder the table's paths are relative to, itself relative to the table's folder
      (or ``{card split: folder}``); ``path_suffix`` is appended to each path (ISIC lists bare ids).
    * ``path_column`` / ``label_column`` / ``labels_column`` / ``split_column``: column names.
    * ``split_values``: card split -> value(s) of the split column (or key of a JSON split file).
    * ``label_columns``: one 0/1 column per card class, in class order (CheXpert, ISIC); with
      ``multilabel: false`` each row must have exactly one positive. ``uncertain`` is what a ``-1``
      becomes (CheXpert's U-Zeros = 0, U-Ones = 1); blanks are 0.
    * ``separator`` / ``ignore_labels``: multi-label names in ``labels_column``, and names that mean
      "no class" (NIH's "No Finding").
    * ``split_lists``: card split -> text file of image names (NIH's train_val_list.txt).
    * ``hash_split``: card split -> [lo, hi) fraction of a stable hash of the path, for datasets
      whose public labels come as one pool (ISIC 2019).
    * ``where``: {column: value or [values]} row filter (e.g. frontal CheXpert views only).
    """

    def __init__(self, classes: list[str], split: str, file, image_root=".", path_suffix: str = "",
                 path_column: str = "path", label_column: str = "label", labels_column: str = "labels",
                 split_column: str = "split",
                 split_values: dict | None = None, label_columns: list[str] | None = None, multilabel: bool = True,
                 uncertain: int = 0, separator: str = "|", ignore_labels: list[str] = (),
                 split_lists: dict | None = None, hash_split: dict | None = None, where: dict | None = None, root=None):
        super().__init__(classes, split)
        base = (Path(root) if root is not None else default_data_root()).expanduser()
        per_split_file = isinstance(file, dict)
        if per_split_file and split not in file:
            raise KeyError(f"manifest: no file for split {split!r}; files are given for {sorted(file)}")
        self.path = base / (file[split] if per_split_file else file)
        if not self.path.is_file():
            raise DatasetNotFoundError(
                f"manifest for split {split!r} not found: looked for {self.path}. See the dataset card's "
                f"source.obtain for how to get the data and the layout expected on disk."
            )
        self.lookup = _ClassLookup(self.classes)
        self.wanted = (split_values or {}).get(split, split)
        self._split_json = False
        table = self._read()
        if where:
            for column, allowed in where.items():
                allowed = allowed if isinstance(allowed, list) else [allowed]
                table = table[table[column].astype(str).isin([str(a) for a in allowed])]
        table = self._select_split(table, per_split_file, path_column, split_column, split_lists, hash_split)
        if len(table) == 0:
            raise EmptySplitError(f"split {split!r} of manifest {self.path} has no rows "
                                  f"(split filter: {self.wanted!r})")
        if path_column not in table.columns:
            raise KeyError(f"{self.path}: no path column {path_column!r}; columns: {list(table.columns)}")
        if isinstance(image_root, dict):
            image_root = image_root.get(split, ".")
        image_base = self.path.parent / image_root
        self.files = [str(image_base / f"{p}{path_suffix}") for p in table[path_column]]
        self._labels = self._resolve_labels(table, path_column, label_column, labels_column, label_columns,
                                            multilabel, uncertain, separator, ignore_labels)
        # Cache key material: the table's own paths (not where the data root happens to be) and labels.
        h = hashlib.sha256(self._labels.tobytes())
        for p in table[path_column].astype(str):
            h.update(p.encode() + b"\0")
        self._items = h.hexdigest()[:16]

    # -------------------------------------------------------------- reading

    def _read(self):
        import pandas as pd

        suffix = self.path.suffix.lower()
        if suffix == ".json":
            return self._read_split_json()
        if suffix == ".parquet":
            return pd.read_parquet(self.path)
        sep = "\t" if suffix in (".tsv", ".tab") else ","
        return pd.read_csv(self.path, sep=sep, dtype=str, keep_default_na=False)

    def _read_split_json(self):
        """CoOp/Dassl split files: {split: [[path, label, classname], ...]}; the split is the key."""
        import pandas as pd

        data = json.loads(self.path.read_text())
        if self.wanted not in data:
            raise KeyError(f"{self.path}: no split {self.wanted!r}; it has {sorted(data)}")
        rows = [list(item) + [None] * (3 - len(item)) for item in data[self.wanted]]
        self._split_json = True
        return pd.DataFrame(rows, columns=["path", "_id", "_name"])

    def _select_split(self, table, per_split_file, path_column, split_column, split_lists, hash_split):
        if self._split_json or per_split_file:
            return table
        if split_lists:
            if self.split not in split_lists:
                raise KeyError(f"{self.path}: split_lists has no entry for split {self.split!r}")
            listing = self.path.parent / split_lists[self.split]
            if not listing.is_file():
                raise DatasetNotFoundError(f"split list for {self.split!r} not found: looked for {listing}")
            names = {line.strip() for line in listing.read_text().splitlines() if line.strip()}
            paths = table[path_column].astype(str)
            return table[paths.isin(names) | paths.map(lambda p: Path(p).name).isin(names)]
        if hash_split:
            if self.split not in hash_split:
                raise KeyError(f"{self.path}: hash_split has no range for split {self.split!r}")
            lo, hi = hash_split[self.split]
            frac = table[path_column].astype(str).map(
                lambda p: int(hashlib.sha1(p.encode()).hexdigest()[:8], 16) / 2**32)
            return table[(frac >= lo) & (frac < hi)]
        if split_column in table.columns:
            wanted = self.wanted if isinstance(self.wanted, list) else [self.wanted]
            return table[table[split_column].astype(str).isin([str(w) for w in wanted])]
        return table  # a manifest without split information is one split

    # -------------------------------------------------------------- labels

    def _resolve_labels(self, table, path_column, label_column, labels_column, label_columns, multilabel,
                        uncertain, separator, ignore_labels) -> np.ndarray:
        where = f"{self.path} [{self.split}]"
        paths = table[path_column].astype(str).tolist()
        rows = table.index.tolist()
        if label_columns:
            return self._from_label_columns(table, label_columns, multilabel, uncertain, paths, rows, where)
        if self._split_json:
            names = table["_name"].tolist()
            values = [n if n is not None else i for n, i in zip(names, table["_id"].tolist())]
            return self._single(values, paths, rows, where)
        if labels_column in table.columns:
            return self._multi(table[labels_column].tolist(), separator, ignore_labels, paths, rows, where)
        if label_column in table.columns:
            return self._single(table[label_column].tolist(), paths, rows, where)
        raise KeyError(f"{where}: no label column ({label_column!r}, {labels_column!r} or label_columns); "
                       f"columns: {list(table.columns)}")

    def _single(self, values, paths, rows, where) -> np.ndarray:
        ids = [self.lookup(v) for v in values]
        bad = [(r, p, v) for r, p, v, i in zip(rows, paths, values, ids) if i is None]
        if bad:
            raise _bad_rows(where, bad, self.lookup)
        return np.asarray(ids, dtype=np.int64)

    def _multi(self, values, separator, ignore_labels, paths, rows, where) -> np.ndarray:
        ignore = {normalize_name(x) for x in ignore_labels}
        out = np.zeros((len(values), len(self.classes)), dtype=np.int64)
        bad = []
        for k, (r, p, v) in enumerate(zip(rows, paths, values)):
            for name in str(v).split(separator) if v is not None else ():
                if not name.strip() or normalize_name(name) in ignore:
                    continue
                i = self.lookup(name)
                if i is None:
                    bad.append((r, p, name))
                else:
                    out[k, i] = 1
        if bad:
            raise _bad_rows(where, bad, self.lookup)
        return out

    def _from_label_columns(self, table, label_columns, multilabel, uncertain, paths, rows, where) -> np.ndarray:
        if len(label_columns) != len(self.classes):
            raise LabelMismatchError(f"{where}: {len(label_columns)} label_columns for {len(self.classes)} classes")
        missing = [c for c in label_columns if c not in table.columns]
        if missing:
            raise LabelMismatchError(f"{where}: label columns {missing} are not in the table; columns: "
                                     f"{list(table.columns)}")

        def value(x) -> int:
            text = str(x).strip()
            if text in ("", "nan", "None"):
                return 0
            v = float(text)
            return int(uncertain) if v < 0 else int(v > 0)

        matrix = np.asarray([[value(x) for x in table[c]] for c in label_columns], dtype=np.int64).T
        if multilabel:
            return matrix
        positives = matrix.sum(axis=1)
        bad = [(r, p, f"{int(n)} positive columns") for r, p, n in zip(rows, paths, positives) if n != 1]
        if bad:
            raise _bad_rows(where, bad, self.lookup, what="one-hot labels")
        return matrix.argmax(axis=1).astype(np.int64)

    # -------------------------------------------------------------- interface

    def identity(self) -> dict:
        return {"kind": "manifest", "file": self.path.name, "split": self.split, "n": len(self),
                "items": self._items}
