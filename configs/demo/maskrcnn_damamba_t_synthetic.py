# Mask R-CNN + DAMamba-T trained from scratch on the embedded synthetic shapes: the DefMamba
# demo with the backbone swapped (run with tools/train.py after make demo wrote data/synthetic).
_base_ = ['./maskrcnn_defmamba_t_synthetic.py']
model = dict(
    backbone=dict(_delete_=True, type='mmdefscan.DAMamba', arch='tiny', drop_path_rate=0.0,
                  norm_cfg=dict(type='BN', requires_grad=True)),  # SyncBN needs CUDA with >1 process
    neck=dict(in_channels=[80, 160, 320, 512]))
