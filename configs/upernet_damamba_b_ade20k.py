# UperNet 160k ADE20K, DAMamba-B: the official recipe (upernet_DAMamba_base_512x512_160k_
# ade20k_ss.py / _ms.py) = the T config with the B backbone (drop path 0.6).
_base_ = ['./upernet_damamba_t_ade20k.py']
pretrained = 'checkpoints/damamba_b_in1k.pth'
model = dict(backbone=dict(arch='base', drop_path_rate=0.6, init_cfg=dict(checkpoint=pretrained)),
             decode_head=dict(in_channels=[112, 224, 448, 640]),
             auxiliary_head=dict(in_channels=448))
