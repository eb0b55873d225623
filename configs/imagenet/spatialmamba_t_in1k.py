# Spatial-Mamba-T on ImageNet-1k: the S recipe with spatialmamba_tiny.yaml (dims 64, depths
# 2-4-8-4, drop path 0.2).
_base_ = ['./spatialmamba_s_in1k.py']
model = dict(backbone=dict(arch='tiny', drop_path_rate=0.2), head=dict(in_channels=512))
