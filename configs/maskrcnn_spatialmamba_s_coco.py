# Mask R-CNN 1x, Spatial-Mamba-S: the official recipe (mask_rcnn_spatialmamba_fpn_coco_small.py) =
# the T config with the S backbone, drop path 0.3.
_base_ = ['./maskrcnn_spatialmamba_t_coco.py']
pretrained = 'checkpoints/spatialmamba_s_in1k.pth'
model = dict(backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)))
