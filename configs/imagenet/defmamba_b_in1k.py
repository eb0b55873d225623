# DefMamba-B on ImageNet-1k: the S recipe with defm_base_224.yaml (dims 96, depths 2-3-16-2,
# drop path 0.4).
_base_ = ['./defmamba_s_in1k.py']
model = dict(backbone=dict(arch='base', drop_path_rate=0.4), head=dict(in_channels=768))
