"""Per-class description files: the published ``{"class name": ["sentence", ...]}`` JSON form.

Menon & Vondrick's ``descriptors_*.json`` (the LLM descriptions PCB and CB+SQ
train their class prompts with) and CuPL's prompt files share one shape: a JSON
object whose keys are class names and whose values are lists of sentences. A
dataset card names such a file with its ``descriptions`` field, relative to
the data root (``descriptions: descriptors/descriptors_dtd.json``, or a
mapping with ``file``, ``keys`` and ``obtain``); the sentences then replace
the card's ``attributes.<class>.positive`` as what ``descriptions: ensemble``
appends to each class prompt. A card without the field keeps its attributes.

Matching a file's keys to the card's classes, in this order:

1. ``keys`` in the card (card class -> key in the file), for names that differ
   by more than spelling (PCB's EuroSAT file says "industrial buildings or
   commercial buildings" where CoOp's class list says "Industrial Buildings");
2. the exact class name;
3. the name compared case-insensitively with underscores as spaces and runs of
   whitespace collapsed (``Annual_Crop_Land`` = ``annual crop land``), the rule
   the manifest source already uses for class names
   (:func:`datasets.sources.manifest.normalize_name`). Hyphens and other
   punctuation are kept (``polka-dotted`` is not ``polka dotted``): in names
   such as FGVC-Aircraft's "737-200" or "F-16A/B" they are part of the name;
4. the same words in another order, under rule 3 (PCB's Stanford Cars file
   writes "AM General Hummer SUV 2000" where CoOp writes "2000 AM General
   Hummer SUV").

Every card class must be matched to a non-empty list, or loading fails listing
every class that is not (with the closest keys the file has); keys for classes
the card does not list are ignored, so one file may serve a subset card. Two
file keys that become the same name under rule 3 are an error, because which
one a class gets would otherwise depend on the file's order; rule 4 is simply
not used for a name that several file keys, or several card classes, share
(such a class needs rules 1-3 or ``keys``).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from .sources.base import DATA_ROOT_ENV, default_data_root
from .sources.manifest import normalize_name


class DescriptionsNotFoundError(FileNotFoundError, ValueError):
    """The description file is not on disk; the message names the path and how to get it.

    Also a ValueError (as ``io.UnsupportedOperation`` is both), so entry points that report config
    problems as ValueErrors (``experiments/sweep.py`` exits 2) report this one the same way.
    """


class DescriptionsMismatchError(ValueError):
    """A description file that is not ``{class: [sentence, ...]}`` or misses classes of the card."""


def description_path(file: str | Path, data_root: str | Path | None = None) -> Path:
    """Where a card's description file lives: under the data root unless the card gives an absolute path.

    Same root as the images (``ALVLM_DATA_ROOT``), so a site copies one folder and both are found.
    """
    path = Path(file).expanduser()
    if path.is_absolute():
        return path
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    return root / path


def read_description_file(path: Path, obtain: str = "") -> dict[str, list[str]]:
    """Parse one file and check its shape; every error names the file, a missing one says how to get it."""
    if not path.is_file():
        how = f" To get it: {obtain.strip()}" if obtain.strip() else ""
        raise DescriptionsNotFoundError(
            f"class-description file not found: looked for {path} (the card's `descriptions` is relative to the "
            f"data root, ${DATA_ROOT_ENV}; the file is a JSON object {{\"class name\": [\"sentence\", ...]}}, "
            f"e.g. Menon & Vondrick's descriptors_*.json or a CuPL prompt file).{how}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DescriptionsMismatchError(f"class-description file {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise DescriptionsMismatchError(f"class-description file {path} must hold a JSON object "
                                        f"{{\"class name\": [\"sentence\", ...]}}, got {type(raw).__name__}")
    bad = [k for k, v in raw.items() if not isinstance(v, list) or not all(isinstance(s, str) for s in v)]
    if bad:
        raise DescriptionsMismatchError(f"class-description file {path}: the values of {bad[:5]} are not lists of "
                                        "strings; each class maps to a list of sentences")
    return {str(k): [s.strip() for s in v if s.strip()] for k, v in raw.items()}


def match_descriptions(raw: Mapping[str, Sequence[str]], classes: Sequence[str],
                       keys: Mapping[str, str] | None = None, source: str = "the description file"
                       ) -> dict[str, list[str]]:
    """The sentences of every card class, found by the rules in the module docstring.

    Returns a dict in card class order. Fails listing every unmatched class at
    once, so a user fixes the file (or the card's ``keys``) in one pass.
    """
    keys = dict(keys or {})
    loose, clashes = _index(raw, normalize_name)
    words, word_clashes = _index(raw, _word_bag)
    card_bags = [_word_bag(c) for c in classes]
    word_clashes = {**word_clashes, **{b: [] for b in card_bags if card_bags.count(b) > 1}}  # "A B" and "B A"
    out, missing = {}, []
    for cls in classes:
        key = keys.get(cls)
        if key is None and cls in raw:
            key = cls
        if key is None and normalize_name(cls) in clashes:
            raise DescriptionsMismatchError(
                f"{source}: keys {clashes[normalize_name(cls)]} all read as class {cls!r} (case and "
                "underscores ignored); keep one, or name the right one in the card's descriptions.keys")
        if key is None:
            key = loose.get(normalize_name(cls))
        if key is None and _word_bag(cls) not in word_clashes:
            key = words.get(_word_bag(cls))
        sentences = list(raw.get(key, ())) if key is not None else []
        if not sentences:
            missing.append(cls)
        else:
            out[cls] = sentences
    if missing:
        raise DescriptionsMismatchError(_missing_message(source, missing, list(raw), keys, len(classes)))
    return out


def _word_bag(name: str) -> str:
    """A name's words in sorted order (rule 4): the same class written in another word order."""
    return " ".join(sorted(normalize_name(name).split()))


def _index(raw: Mapping[str, object], norm) -> tuple[dict[str, str], dict[str, list[str]]]:
    """File keys by ``norm(key)``, and the normalised names that several different keys share."""
    index: dict[str, str] = {}
    clashes: dict[str, list[str]] = {}
    for key in raw:
        n = norm(key)
        if n in index:
            clashes.setdefault(n, [index[n]]).append(key)
        else:
            index[n] = key
    return index, clashes


def _missing_message(source: str, missing: list[str], file_keys: list[str], keys: Mapping[str, str],
                     n_classes: int) -> str:
    """Which classes have no sentences, and for a few of them the closest keys the file does have."""
    hints = []
    by_norm = {normalize_name(k): k for k in file_keys}
    for cls in missing[:10]:
        close = [by_norm[n] for n in difflib.get_close_matches(normalize_name(cls), list(by_norm), n=2, cutoff=0.5)]
        named = f" (card keys: {keys[cls]!r} is not in the file)" if cls in keys else ""
        hints.append(f"{cls!r}{named}" + (f" -> closest keys: {close}" if close else ""))
    more = f" ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    return (f"{source} has no sentences for {len(missing)} of the card's {n_classes} classes: {missing}. "
            f"Matching ignores case, underscores and word order ({'; '.join(hints)}{more}); for names that differ "
            "otherwise, map them in the card: descriptions: {file: ..., keys: {CARD CLASS: FILE KEY}}")


def load_descriptions(file: str | Path, classes: Sequence[str], keys: Mapping[str, str] | None = None,
                      data_root: str | Path | None = None, obtain: str = "") -> dict[str, list[str]]:
    """Read ``file`` (relative to the data root) and return the sentences of every class in ``classes``."""
    path = description_path(file, data_root)
    raw = read_description_file(path, obtain)
    return match_descriptions(raw, classes, keys, source=f"class-description file {path}")


def card_descriptions(card, data_root: str | Path | None = None) -> dict[str, list[str]] | None:
    """The sentences of a card's description file, or None when the card names none (attributes apply)."""
    spec = getattr(card, "descriptions", None)
    if spec is None:
        return None
    try:
        return load_descriptions(spec.file, card.classes, spec.keys, data_root, spec.obtain)
    except (DescriptionsNotFoundError, DescriptionsMismatchError) as exc:
        raise type(exc)(f"dataset {card.name!r}: {exc}") from None
