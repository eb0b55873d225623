# Mask R-CNN 3x, DAMamba-B: the official recipe (mask_rcnn_DAMamba_base_fpn_3x.py) = the T 3x
# config with the B backbone (drop path 0.6).
_base_ = ['./maskrcnn_damamba_t_coco_3x.py']
pretrained = 'checkpoints/damamba_b_in1k.pth'
model = dict(backbone=dict(arch='base', drop_path_rate=0.6, init_cfg=dict(checkpoint=pretrained)),
             neck=dict(in_channels=[112, 224, 448, 640]))
# official: 1 img/GPU, 1 worker (x 8 GPUs = 8, lr unchanged), so --auto-scale-lr counts from 8
train_dataloader = dict(batch_size=1, num_workers=1)
auto_scale_lr = dict(base_batch_size=8)
