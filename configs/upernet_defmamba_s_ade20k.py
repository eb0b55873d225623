# UperNet 160k ADE20K 512x512, DefMamba-S: the official recipe (DefMamba:segmentation/configs/
# defm/upernet_ms_defm_4xb4-160k_ade20k-512x512_small.py) = mmseg's Swin-T UperNet config with
# the backbone swapped: AdamW lr 6e-5 wd 0.01 (no decay on norms), 1500-iter warm-up, poly,
# 2 img/GPU x 8, drop path 0.3. Single-scale test: whole image, (2048, 512). Multi-scale:
# tools/test.py --tta (ratios 0.5-1.75 x flip, mmseg's SegTTAModel).
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)

pretrained = 'checkpoints/defmamba_s_in1k.pth'
# cuda_graph: the training crops have one shape, so the backbone's forward + backward replay
# from one CUDA graph (at the recipe's 2 images per GPU the eager iteration waits on the host;
# speed and memory: docs/cuda_graph.md).
# Validation and testing replay inference graphs of the first 8 image shapes.
model = dict(
    backbone=dict(_delete_=True, type='mmdefscan.DefMamba', arch='small', drop_path_rate=0.3,
                  out_indices=(0, 1, 2, 3), init_cfg=dict(type='Pretrained', checkpoint=pretrained),
                  cuda_graph=True),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
