"""Image sources; importing this package registers every source kind."""

from . import synthetic  # noqa: F401
from . import imagefolder, manifest, npz, torchvision_source  # noqa: F401
from .base import (CorruptImageError, DatasetNotFoundError, EmptySplitError, ImageSource,  # noqa: F401
                   LabelMismatchError)
