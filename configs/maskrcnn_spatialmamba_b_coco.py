# Mask R-CNN 1x, Spatial-Mamba-B: the official recipe (mask_rcnn_spatialmamba_fpn_coco_base.py) =
# the T config with the B backbone, drop path 0.5.
_base_ = ['./maskrcnn_spatialmamba_t_coco.py']
pretrained = 'checkpoints/spatialmamba_b_in1k.pth'
model = dict(backbone=dict(arch='base', drop_path_rate=0.5, init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[96, 192, 384, 768]))
