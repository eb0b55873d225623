"""What the analysis tools share: a backbone from a config and checkpoint, an image as its
input, and maps drawn over the image."""
import cv2
import numpy as np
import torch

from ..models.checkpoint import load_backbone_weights
from ..registry import MODELS

# ImageNet statistics (RGB), when the config has no data_preprocessor
DEFAULT_NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)


def add_input_arguments(parser, config_help, image_help, out_dir):
    """The arguments the analysis tools share: config, image, --checkpoint, --prefix, --size,
    --out-dir, --device."""
    parser.add_argument('config', help=config_help)
    parser.add_argument('image', help=image_help)
    parser.add_argument('--checkpoint', help='model or backbone checkpoint')
    parser.add_argument('--prefix', default='backbone.',
                        help="the backbone's keys in the checkpoint ('' for a backbone checkpoint)")
    parser.add_argument('--size', type=int, default=512,
                        help='short side of the input, rounded to a multiple of 32')
    parser.add_argument('--out-dir', default=out_dir)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    return parser


def image_norm(cfg):
    """The normalisation of a config's data_preprocessor (model's or top level), else ImageNet's."""
    return dict(cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor')
                or DEFAULT_NORM)


def build_backbone(cfg, checkpoint, prefix):
    """The config's backbone, with the backbone weights of ``checkpoint`` (keys under
    ``prefix``; '' or None for a backbone checkpoint); without a checkpoint it keeps its random
    initialisation, and says so."""
    backbone_cfg = dict(cfg.model.backbone)
    backbone_cfg.pop('init_cfg', None)
    backbone_cfg['type'] = backbone_cfg['type'].split('.')[-1]  # 'mmdefscan.DefMamba'
    backbone_cfg.pop('cuda_graph', None)  # inference only
    backbone = MODELS.build(backbone_cfg)
    if checkpoint is None:
        print('no --checkpoint: the backbone has random weights')
        return backbone
    load_backbone_weights(backbone, checkpoint, prefix=prefix or None,
                          head_prefixes=backbone.head_prefixes,
                          optional_prefixes=backbone.optional_prefixes)
    return backbone


def load_image(path, size, norm):
    """(the image resized to a short side of about ``size``, both sides multiples of 32 (BGR
    uint8), the normalised input (1, 3, H, W))."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'image {path} does not exist or is not an image')
    scale = size / min(image.shape[:2])
    height, width = (max(32, round(side * scale / 32) * 32) for side in image.shape[:2])
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    pixels = image[..., ::-1] if norm.get('bgr_to_rgb', norm.get('to_rgb', False)) else image
    mean = np.asarray(norm.get('mean', DEFAULT_NORM['mean']), np.float32)
    std = np.asarray(norm.get('std', DEFAULT_NORM['std']), np.float32)
    tensor = torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy())
    return image, tensor[None]


def overlay(image, values, interpolation=cv2.INTER_NEAREST, weight=0.6):
    """``values`` (h, w) in [0, 1] as a JET colour map resized over ``image`` (BGR uint8)."""
    values = np.clip(np.asarray(values, np.float64), 0, 1)
    colours = cv2.applyColorMap((values * 255).round().astype(np.uint8), cv2.COLORMAP_JET)
    colours = cv2.resize(colours, image.shape[1::-1], interpolation=interpolation)
    return cv2.addWeighted(image, 1 - weight, colours, weight, 0)
