# DefMamba ablation, deformable points + tokens + offset bias, no channel attention (paper: 78.2).
_base_ = ['./defmamba_t_in1k_dp_dt.py']
model = dict(backbone=dict(offset_bias=True))
