from .mmpretrain_compat import disable_multimodal_if_incompatible as \
    disable_mmpretrain_multimodal_if_incompatible
from .torchvision_stub import install_if_missing as install_torchvision_stub_if_missing

__all__ = ['disable_mmpretrain_multimodal_if_incompatible', 'install_torchvision_stub_if_missing']
