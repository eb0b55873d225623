from .mmpretrain_compat import disable_multimodal_if_incompatible as \
    disable_mmpretrain_multimodal_if_incompatible

__all__ = ['disable_mmpretrain_multimodal_if_incompatible']
