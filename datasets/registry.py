"""The dataset registry: every card the project knows, and how to open a split.

Cards come from three places: YAML files in ``datasets/cards/`` (drop a file
there to add a dataset), Python modules that build cards in code (the
synthetic family, whose attributes are generated) and user card files outside
the package, loaded with :func:`load_card_files`. All go through
:class:`~datasets.card.DatasetCard` validation.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from .card import DatasetCard
from .sources.base import ImageSource
from .sources.registry import source_class

CARD_DIR = Path(__file__).resolve().parent / "cards"
_CARDS: dict[str, DatasetCard] = {}
_LOADED = False


def register_card(card: DatasetCard) -> DatasetCard:
    if card.name in _CARDS and _CARDS[card.name] != card:
        raise ValueError(f"dataset {card.name!r} registered twice with different cards")
    _CARDS[card.name] = card
    return card


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    # Importing these modules registers their sources and code-built cards.
    from . import sources  # noqa: F401
    from .cards import synthetic  # noqa: F401

    for path in sorted(CARD_DIR.glob("*.yaml")):
        register_card(_read_card_file(path))


def load_card_files(paths: Iterable[str | Path]) -> list[str]:
    """Register user card files (YAML outside the package) and return their card names, in order.

    Users add datasets without editing the installed project. Loading is idempotent, because every
    Ray worker and every entry point loads the same files again; a file that would silently replace
    a different card of the same name is refused, because features cached under that name would no
    longer match it.
    """
    _load_all()  # built-in cards first, so a user card that reuses their name is caught
    return [_register_card_file(Path(p).expanduser().resolve()) for p in paths]


def _register_card_file(path: Path) -> str:
    """Validate one card file and register it; errors name the file so the user knows which to fix."""
    card = _read_card_file(path)
    known = _CARDS.get(card.name)
    if known is not None and known != card:
        raise ValueError(f"dataset {card.name!r} from {path} clashes with a registered card of the same name; "
                         "rename it")
    if known is None:  # an equal card is already registered: keep that object
        register_card(card)
    return card.name


def _read_card_file(path: Path) -> DatasetCard:
    """Parse and validate one card file, turning YAML and pydantic errors into one ValueError."""
    if not path.is_file():
        raise FileNotFoundError(f"dataset card file not found: {path}")
    try:
        return DatasetCard.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"invalid dataset card {path}: {exc}") from exc


def list_datasets() -> list[str]:
    _load_all()
    return sorted(_CARDS)


def get_card(name: str) -> DatasetCard:
    _load_all()
    if name not in _CARDS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(_CARDS))}")
    return _CARDS[name]


def open_split(name: str, split: str, data_root: str | Path | None = None, **options) -> ImageSource:
    """Build the image source of ``name``/``split``; ``options`` override the card's source options."""
    card = get_card(name)
    if split not in card.splits:
        raise KeyError(f"{name}: unknown split {split!r}; known: {sorted(card.splits)}")
    cls = source_class(card.source.kind)
    merged = {**card.source.options, **options}
    if data_root is not None:
        merged["root"] = data_root
    source = cls(classes=card.classes, split=split, **merged)
    source.check_labels()
    return source
