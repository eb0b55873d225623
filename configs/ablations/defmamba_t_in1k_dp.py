# DefMamba ablation, deformable branch with deformable points only (paper: 77.4).
_base_ = ['./defmamba_t_in1k_db_plain.py']
model = dict(backbone=dict(deformable_points=True))
