"""The ``mmdefscan`` registry scope.

Every registry is a child of MMEngine's root, so ``type='mmdefscan.DefMamba'`` resolves from
mmdet, mmseg or mmpretrain configs (MMEngine imports ``mmdefscan.registry`` on demand and the
``locations`` below register the modules lazily).
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

# Backbones, scan operators and TTA wrappers.
MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmdefscan',
                  locations=['mmdefscan.models', 'mmdefscan.ops'])


def register_backbone(cls):
    """Register ``cls`` in the mmdefscan scope AND at MMEngine's root registry.

    Children search their parents, so a bare ``type='DefMamba'`` then builds under any default
    scope (mmdet, mmseg, mmpretrain) once ``mmdefscan`` is imported, without importing those
    packages here.
    """
    MODELS.register_module(module=cls)
    if cls.__name__ not in MMENGINE_MODELS.module_dict:
        MMENGINE_MODELS.register_module(module=cls)
    return cls
