"""Per-class attribute sentences: inline in the card, or from AttrVR-layout files under the data root.

AttrVR (Cai et al., ICLR 2025) and BioMedVR score images against attribute
sentences instead of class prompts: *descriptive* ("positive"),
*discriminative* and, for BioMedVR, *confusion-aware* negatives (how a
class's look-alikes appear, eq. 10). The synthetic cards carry them inline;
real cards name one JSON file per kind (``attribute_files``), ``{"class":
["sentence", ...]}`` -- the layout AttrVR's authors released, or what
``experiments/attributes.py`` writes with an LLM endpoint. A file replaces
that kind for every class; class names match as for description files
(:mod:`datasets.descriptions`: case, underscores and word order ignored,
``keys`` for the rest). A missing file or class is an error naming the path.
"""

from __future__ import annotations

from pathlib import Path

from .card import ATTRIBUTE_KINDS
from .descriptions import DescriptionsMismatchError, DescriptionsNotFoundError, description_path, load_descriptions


def card_attributes(card, data_root: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    """class -> {positive, discriminative, confusion} sentences: the card's inline ones, files replacing kinds."""
    out = {c: {k: list(getattr(card.attributes[c], k)) if c in card.attributes else [] for k in ATTRIBUTE_KINDS}
           for c in card.classes}
    for kind, spec in card.attribute_files.items():
        try:
            sentences = load_descriptions(spec.file, card.classes, spec.keys, data_root, spec.obtain)
        except (DescriptionsNotFoundError, DescriptionsMismatchError) as exc:
            raise type(exc)(f"dataset {card.name!r}, {kind} attributes: {exc}") from None
        for cls, items in sentences.items():
            out[cls][kind] = items
    return {c: kinds for c, kinds in out.items() if any(kinds.values())}


def attribute_file_status(card, data_root: str | Path | None = None) -> dict[str, dict]:
    """Per kind the card names a file for: where it is looked for and whether it is there (for --dry-run)."""
    return {kind: {"path": str(description_path(spec.file, data_root)),
                   "present": description_path(spec.file, data_root).is_file(), "obtain": spec.obtain}
            for kind, spec in card.attribute_files.items()}
