"""Acquisition strategies; importing this package registers them."""

from . import (cbsq, cec, clustering, diversity, dual, few_shot, gcnal, model_based, uncertainty,  # noqa: F401
               blackbox)
