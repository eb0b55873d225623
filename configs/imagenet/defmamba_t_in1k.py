# DefMamba-T on ImageNet-1k: the S recipe with defm_tiny_224.yaml (dims 48, depths 2-2-5-2,
# drop path 0.2).
_base_ = ['./defmamba_s_in1k.py']
model = dict(backbone=dict(arch='tiny', drop_path_rate=0.2), head=dict(in_channels=384))
