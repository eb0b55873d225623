from .det_mask_tta import DetMaskTTAModel

__all__ = ['DetMaskTTAModel']
