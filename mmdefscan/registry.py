"""The ``mmdefscan`` registry scope.

Every registry is a child of MMEngine's root, so ``type='mmdefscan.DefMamba'`` resolves from
mmdet, mmseg or mmpretrain configs (MMEngine imports ``mmdefscan.registry`` on demand and the
``locations`` below register the modules lazily).

The three backbones are also registered by their bare names at MMEngine's root registry, so that
``type='DefMamba'`` builds under any default scope once ``mmdefscan`` is imported. Only where the
name is free: a class of the same name that another package registered first (at the root or in
a scope MMEngine has loaded) keeps it, and a warning names that package and the scoped name that
builds ours.
"""
import warnings

from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

# Backbones, scan operators and TTA wrappers.
MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmdefscan',
                  locations=['mmdefscan.models', 'mmdefscan.ops'])


def _holders(name, registry=MMENGINE_MODELS):
    """(scope, class) of every registration of ``name`` in ``registry`` and its descendants,
    mmdefscan's own scope excepted."""
    found = []
    if registry is not MODELS and name in registry.module_dict:
        found.append((registry.scope, registry.module_dict[name]))
    for child in registry.children.values():
        found += _holders(name, child)
    return found


def register_backbone(cls):
    """Register ``cls`` in the mmdefscan scope and, where the bare name is free (see the module
    docstring), at MMEngine's root registry; otherwise warn, naming the other class."""
    MODELS.register_module(module=cls)
    others = [(scope, other) for scope, other in _holders(cls.__name__) if other is not cls]
    if others:
        scope, other = others[0]
        warnings.warn(f"mmdefscan: type='{cls.__name__}' stays {other.__module__}."
                      f"{other.__qualname__} (registered in the {scope} scope by another "
                      f"package); use type='mmdefscan.{cls.__name__}' for mmdefscan's",
                      stacklevel=2)
    elif cls.__name__ not in MMENGINE_MODELS.module_dict:
        MMENGINE_MODELS.register_module(module=cls)
    return cls
