"""Acquisition strategies; importing this package registers them."""

from . import uncertainty  # noqa: F401
