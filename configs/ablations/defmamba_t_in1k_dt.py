# DefMamba ablation, deformable branch with deformable tokens only (paper: 77.2).
_base_ = ['./defmamba_t_in1k_db_plain.py']
model = dict(backbone=dict(deformable_tokens=True))
