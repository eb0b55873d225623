# Mask R-CNN 3x, Spatial-Mamba-B: the official repository has no B 3x config; this is its T/S 3x
# recipe with the backbone of its B 1x config (drop path 0.5).
_base_ = ['./maskrcnn_spatialmamba_t_coco_3x.py']
pretrained = 'checkpoints/spatialmamba_b_in1k.pth'
model = dict(backbone=dict(arch='base', drop_path_rate=0.5, init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[96, 192, 384, 768]))
