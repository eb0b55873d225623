# DefMamba ablation, deformable points + deformable tokens, no offset bias or channel attention
# (paper: 77.9).
_base_ = ['./defmamba_t_in1k_db_plain.py']
model = dict(backbone=dict(deformable_points=True, deformable_tokens=True))
