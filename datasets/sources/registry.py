"""Source kinds register themselves by decoration; cards name them by ``kind``."""

from __future__ import annotations

from typing import Callable

_SOURCES: dict[str, type] = {}


def register_source(kind: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if kind in _SOURCES and _SOURCES[kind] is not cls:
            raise ValueError(f"source kind {kind!r} registered twice")
        _SOURCES[kind] = cls
        return cls
    return deco


def source_class(kind: str) -> type:
    if kind not in _SOURCES:
        raise KeyError(f"unknown source kind {kind!r}; known: {sorted(_SOURCES)}")
    return _SOURCES[kind]


def known_source_kinds() -> list[str]:
    return sorted(_SOURCES)
