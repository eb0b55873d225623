"""mmdefscan: vision Mamba backbones with deformable / adaptive scanning for OpenMMLab."""
__version__ = '0.1.0'

from .utils import disable_mmpretrain_multimodal_if_incompatible

# mmpretrain 1.2's models fail to import beside transformers 5 (utils/mmpretrain_compat.py)
disable_mmpretrain_multimodal_if_incompatible()

from . import ops  # noqa: E402,F401
from . import models  # noqa: E402,F401
from .registry import MODELS  # noqa: E402,F401
from .engine.safe_load import allow_mmengine_checkpoints  # noqa: E402

allow_mmengine_checkpoints()
