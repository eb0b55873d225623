"""configs/imagenet/: every variant builds as an mmpretrain ImageClassifier with the official
recipe and takes one training loss step (mixup / cutmix on) whose gradients reach the backbone."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmdefscan  # noqa: F401  (before mmpretrain: torchvision stand-in where it is missing)
from _refs import REPO

CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / 'configs/imagenet').glob('*.py'))


def test_every_variant_has_a_config():
    assert {Path(c).name for c in CONFIGS} == {
        f'{model}_{v}_in1k.py' for model in ('defmamba', 'spatialmamba', 'damamba') for v in 'tsb'}


def test_recipe():
    cfg = Config.fromfile(str(REPO / 'configs/imagenet/damamba_t_in1k.py'))
    optim = cfg.optim_wrapper
    assert optim.type == 'AmpOptimWrapper' and optim.clip_grad == dict(max_norm=5.0)
    assert optim.optimizer.type == 'AdamW' and optim.optimizer.weight_decay == 0.05
    total_batch = 8 * cfg.train_dataloader.batch_size
    assert total_batch == cfg.auto_scale_lr.base_batch_size == 1024
    assert optim.optimizer.lr == pytest.approx(5e-4 * total_batch / 512)
    wd = optim.paramwise_cfg
    assert wd.norm_decay_mult == wd.bias_decay_mult == wd.flat_decay_mult == 0.0
    warmup, cosine = cfg.param_scheduler
    assert (warmup.end, cosine.begin, cfg.train_cfg.max_epochs) == (20, 20, 300)
    assert cosine.type == 'CosineAnnealingLR' and cosine.eta_min == pytest.approx(1e-5)
    assert cfg.model.head.loss == dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                                       mode='original')
    assert cfg.model.train_cfg.augments == [dict(type='Mixup', alpha=0.8),
                                            dict(type='CutMix', alpha=1.0)]
    erasing = next(t for t in cfg.train_pipeline if t.type == 'RandomErasing')
    assert erasing.erase_prob == 0.25
    assert cfg.custom_hooks[0].type == 'EMAHook' and cfg.custom_hooks[0].momentum == 1e-4
    assert cfg.model.backbone.drop_path_rate == 0.15 and cfg.model.backbone.norm_cfg.type == 'BN'


@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds_and_takes_a_loss_step(path):
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    cfg = Config.fromfile(str(REPO / path))
    assert cfg.default_scope == 'mmpretrain'
    init_default_scope('mmpretrain')
    cfg.model.setdefault('data_preprocessor', cfg.get('data_preprocessor'))  # as the Runner does
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    assert 'mmdefscan' in type(model.backbone).__module__
    assert model.head.fc.in_features == model.backbone.dims[-1]
    data = {'inputs': [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(2)],
            'data_samples': [DataSample().set_gt_label(label) for label in (3, 917)]}
    data = model.data_preprocessor(data, training=True)  # normalise, then mixup or cutmix
    assert data['data_samples'][0].gt_score.shape == (1000, )
    losses = model(**data, mode='loss')
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(loss)
    loss.backward()
    params = [(n, p) for n, p in model.backbone.named_parameters() if p.requires_grad]
    without = [n for n, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not without, without
    first = next(p for _, p in params)  # the stem's first convolution
    assert first.grad.abs().sum() > 0
