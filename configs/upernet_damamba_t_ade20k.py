# UperNet 160k ADE20K 512x512, DAMamba-T: the official recipe (DAMamba:segmentation/upernet/configs/
# upernet_DAMamba_tiny_512x512_160k_ade20k_ss.py, mmseg 0.x) in mmseg 1 terms, on mmseg's Swin-T
# UperNet config (same heads, data, AdamW lr 6e-5, 1500-iter warm-up, poly, 160k): 2 img/GPU x 8.
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmdefscan'], allow_failed_imports=False)

pretrained = 'checkpoints/damamba_t_in1k.pth'
model = dict(
    backbone=dict(_delete_=True, type='mmdefscan.DAMamba', arch='tiny', drop_path_rate=0.3,
                  norm_cfg=dict(type='SyncBN', requires_grad=True),  # official: hard-coded SyncBN
                  out_indices=(0, 1, 2, 3), init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[80, 160, 320, 512]),
    auxiliary_head=dict(in_channels=320),
    # official single-scale test (the _ss config): 512x512 sliding windows, stride 341 (Swin: whole)
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))

# official: weight decay 0.05 (Swin config: 0.01) and DAMamba's no-decay keys (only 'norm' matches)
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'query_embedding': dict(decay_mult=0.),
                                    'relative_pos_bias_local': dict(decay_mult=0.),
                                    'cpb': dict(decay_mult=0.),
                                    'temperature': dict(decay_mult=0.),
                                    'norm': dict(decay_mult=0.)}))
# official mmcv poly + linear warm-up: poly runs over all 160k iterations and the warm-up factor
# multiplies it (Swin config: poly starts after the warm-up)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=0, end=160000, by_epoch=False)]

# Multi-scale as the official _ms config + test.py --aug-test: scales (2048, 512) x {0.5 ... 1.75}
# x flip, WHOLE-image inference (tools/test.py --tta applies tta_test_cfg to the views)
tta_test_cfg = dict(mode='whole')
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(2048 * r), int(512 * r)), keep_ratio=True)
         for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])]
