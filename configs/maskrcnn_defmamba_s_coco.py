# Mask R-CNN 1x, DefMamba-S: the official recipe (DefMamba:detection/configs/defm/
# mask_rcnn_defm-s_fpn_coco_small.py), i.e. mmdet's Swin-T 1x config with the backbone swapped:
# AdamW lr 1e-4 wd 0.05 (no decay on norms), 1000-iter warm-up, steps at 8 and 11, 2 img/GPU x 8.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', './_base_/tta_maskrcnn_coco.py']
custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)

# ImageNet weights converted by tools/model_converters/defmamba2mmdefscan.py; override with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/defmamba_s_in1k.pth'
# cuda_graph: the backbone's training forward + backward replay from CUDA graphs, one per padded
# batch shape, for the first 8 shapes while the device has room (about 1 GiB per graphed shape;
# speed and memory: docs/cuda_graph.md); others run eagerly.
# Validation and testing replay inference graphs of the first 8 image shapes.
# tools/analysis/batch_shapes.py CFG counts a dataset's shapes; cuda_graph=False turns it off.
model = dict(
    backbone=dict(_delete_=True, type='mmdefscan.DefMamba', arch='small', drop_path_rate=0.2,
                  out_indices=(0, 1, 2, 3), init_cfg=dict(type='Pretrained', checkpoint=pretrained),
                  cuda_graph=True),
    neck=dict(in_channels=[96, 192, 384, 768]))
