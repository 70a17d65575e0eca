"""Acquisition strategies; importing this package registers them."""

from . import diversity, uncertainty  # noqa: F401
