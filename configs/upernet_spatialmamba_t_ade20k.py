# UperNet 160k ADE20K 512x512, Spatial-Mamba-T: the official recipe (Spatial-Mamba:segmentation/
# configs/spatialmamba/upernet_spatialmamba_4xb4-160k_ade20k-512x512_tiny.py) = mmseg's Swin-T
# UperNet config with the backbone swapped: AdamW lr 6e-5 wd 0.01 (no decay on norms), 1500-iter
# warm-up, poly, 2 img/GPU x 8 (not the "4xb4" of the name), drop path 0.2. Single-scale test:
# whole image, (2048, 512).
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)

pretrained = 'checkpoints/spatialmamba_t_in1k.pth'
# cuda_graph: the training crops have one shape, so the backbone's forward + backward replay
# from one CUDA graph (at the recipe's 2 images per GPU the eager iteration waits on the host;
# speed and memory: docs/cuda_graph.md).
# Validation and testing replay inference graphs of the first 8 image shapes.
model = dict(
    backbone=dict(_delete_=True, type='mmdefscan.SpatialMamba', arch='tiny', drop_path_rate=0.2,
                  out_indices=(0, 1, 2, 3), init_cfg=dict(type='Pretrained', checkpoint=pretrained),
                  cuda_graph=True),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))

# Multi-scale (tools/test.py --tta), official (Spatial-Mamba:segmentation/configs/_base_/datasets/
# ade20k.py): scales (2048, 512) x {0.75, 1.0, 1.25} x flip, not mmseg's ratios 0.5-1.75.
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(2048 * r), int(512 * r)), keep_ratio=True)
         for r in (0.75, 1.0, 1.25)],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])]
