"""mmdefscan: vision Mamba backbones with deformable / adaptive scanning for OpenMMLab."""
__version__ = '0.1.0'

from . import ops  # noqa: E402,F401
from . import models  # noqa: E402,F401
from .registry import MODELS  # noqa: E402,F401
