# Mask R-CNN + Spatial-Mamba-T trained from scratch on the embedded synthetic shapes: the DefMamba
# demo with the backbone swapped (run with tools/train.py after make demo wrote data/synthetic).
_base_ = ['./maskrcnn_defmamba_t_synthetic.py']
model = dict(
    backbone=dict(_delete_=True, type='mmdefscan.SpatialMamba', arch='tiny', drop_path_rate=0.0),
    neck=dict(in_channels=[64, 128, 256, 512]))
