"""A minimal stand-in for torchvision, installed only when torchvision is absent.

mmpretrain 1.2 imports ``torchvision.ops.boxes`` and ``torchvision.transforms`` at import time,
so without torchvision (there is no CPU wheel for every torch) its models cannot even be
imported. The stand-in gives those imports the box helpers mmpretrain calls (pure torch) and a
transform namespace holding only ``RandomResizedCrop``, which mmpretrain's datasets subclass at
import time (``MAERandomResizedCrop``); building it raises. Any other attribute raises an
AttributeError that says torchvision is missing. A real torchvision, when installed, is always
used instead.
"""
import enum
import importlib.machinery
import importlib.util
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
                             '(mmdefscan provides only what mmpretrain imports)')

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


def install_if_missing():
    """Register the stand-in in ``sys.modules`` unless a real torchvision is importable."""
    if 'torchvision' in sys.modules or importlib.util.find_spec('torchvision') is not None:
        return False
    boxes = _module('torchvision.ops.boxes', box_area=box_area, box_iou=box_iou,
                    generalized_box_iou=generalized_box_iou, _upcast=_upcast)
    ops = _module('torchvision.ops', boxes=boxes, box_area=box_area, box_iou=box_iou,
                  generalized_box_iou=generalized_box_iou)
    functional = _module('torchvision.transforms.functional', InterpolationMode=InterpolationMode)
    inner = _module('torchvision.transforms.transforms', InterpolationMode=InterpolationMode)
    transforms = _module('torchvision.transforms', functional=functional, transforms=inner,
                         InterpolationMode=InterpolationMode, RandomResizedCrop=RandomResizedCrop)
    root = _module('torchvision', ops=ops, transforms=transforms, __version__=STUB_VERSION)
    for module in (root, ops, boxes, transforms, functional, inner):
        sys.modules[module.__name__] = module
    return True
