"""Adaptation learners; importing this package registers them."""

from . import linear_probe, zeroshot  # noqa: F401
from .prompting import biomedcoop, coop, dual, maple, vpt  # noqa: F401
from .blackbox import baps, valiant, valiant_multi  # noqa: F401
from .reprogramming import learners  # noqa: F401
