from .backbones import *  # noqa: F401,F403
from .tta import *  # noqa: F401,F403
