# Mask R-CNN 3x, Spatial-Mamba-S: the official recipe (mask_rcnn_spatialmamba_fpn_coco_small_3x.py)
# = the T 3x config with the S backbone, drop path 0.3.
_base_ = ['./maskrcnn_spatialmamba_t_coco_3x.py']
pretrained = 'checkpoints/spatialmamba_s_in1k.pth'
model = dict(backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)))
