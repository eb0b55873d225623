"""A stand-in for torchvision, for development environments where torchvision cannot be installed.

mmpretrain 1.2 imports ``torchvision.ops.boxes`` and ``torchvision.transforms`` at import time,
so without torchvision (there is no wheel for every torch build) its models cannot even be
imported. ``tools/setup_env.sh`` copies this file into the virtual environment as
``torchvision/__init__.py`` only where ``import torchvision`` fails; mmdefscan itself never
imports it. It gives those imports the box helpers mmpretrain calls (pure torch) and a transform
namespace holding only ``RandomResizedCrop``, which mmpretrain's datasets subclass at import time
(``MAERandomResizedCrop``); building it raises. Any other attribute raises an AttributeError
that says torchvision is missing. Installing the real torchvision replaces it.
"""
import enum
import importlib.machinery
import sys
import types

import torch

STUB_VERSION = '0.0.0+mmdefscan.stub'


def _module(name, **attrs):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    module.__path__ = []
    module.__dict__.update(attrs)

    def __getattr__(attr):
        raise AttributeError(f'{name}.{attr} is unavailable: torchvision is not installed '
                             '(the stand-in provides only what mmpretrain imports)')

    module.__getattr__ = __getattr__
    return module


def box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _upcast(t):
    return t if t.is_floating_point() and t.dtype in (torch.float32, torch.float64) else t.float()


def box_iou(boxes1, boxes2):
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    inter = _upcast(rb - lt).clamp(min=0).prod(2)
    return inter / (area1[:, None] + area2 - inter)


def generalized_box_iou(boxes1, boxes2):
    iou = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    hull = _upcast(rb - lt).clamp(min=0).prod(2)
    area1, area2 = box_area(boxes1), box_area(boxes2)
    inter = iou * (area1[:, None] + area2) / (1 + iou)
    union = area1[:, None] + area2 - inter
    return iou - (hull - union) / hull


class InterpolationMode(enum.Enum):
    NEAREST = 'nearest'
    NEAREST_EXACT = 'nearest-exact'
    BILINEAR = 'bilinear'
    BICUBIC = 'bicubic'
    BOX = 'box'
    HAMMING = 'hamming'
    LANCZOS = 'lanczos'


class RandomResizedCrop:
    """Only a base class for mmpretrain's ``MAERandomResizedCrop``, which its datasets package
    defines at import; mmpretrain's own ``RandomResizedCrop`` (the ImageNet recipes') needs no
    torchvision."""

    def __init__(self, *args, **kwargs):
        raise ImportError(f'{type(self).__name__} needs torchvision, which is not installed')


def _install():
    """Fill this package with its submodules (``torchvision.ops.boxes``, ``.transforms``, ...)."""
    boxes = _module('torchvision.ops.boxes', box_area=box_area, box_iou=box_iou,
                    generalized_box_iou=generalized_box_iou, _upcast=_upcast)
    ops = _module('torchvision.ops', boxes=boxes, box_area=box_area, box_iou=box_iou,
                  generalized_box_iou=generalized_box_iou)
    functional = _module('torchvision.transforms.functional', InterpolationMode=InterpolationMode)
    inner = _module('torchvision.transforms.transforms', InterpolationMode=InterpolationMode)
    transforms = _module('torchvision.transforms', functional=functional, transforms=inner,
                         InterpolationMode=InterpolationMode, RandomResizedCrop=RandomResizedCrop)
    for module in (ops, boxes, transforms, functional, inner):
        sys.modules[module.__name__] = module
    return ops, transforms


if __name__ == 'torchvision':  # imported as the installed stand-in (not when a test loads it)
    ops, transforms = _install()
    __version__ = STUB_VERSION

    def __getattr__(attr):
        raise AttributeError(f'torchvision.{attr} is unavailable: torchvision is not installed '
                             '(this is the stand-in of tools/torchvision_stub.py, which provides '
                             'only what mmpretrain imports)')
