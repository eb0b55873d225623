"""configs/imagenet/: every variant builds as an mmpretrain ImageClassifier with the official
recipe and takes one training loss step (mixup / cutmix on) whose gradients reach the backbone;
the recipe trains through tools/train.py."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmdefscan  # noqa: F401
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
    assert model.backbone.cuda_graph is not None  # one crop shape: graphs by default
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


@pytest.mark.slow
def test_the_recipe_trains_and_tests_through_the_tools_on_a_folder_dataset(tmp_path):
    """tools/train.py runs DefMamba-T's recipe (RandAugment, random erasing, Mixup / CutMix, EMA,
    gradient clipping) in full precision (--no-amp: its AMP wrapper is for CUDA) on a
    class-folder dataset, tiny backbone: two iterations with finite losses; tools/test.py then
    evaluates the checkpoint with the recipe's test pipeline. No torchvision needed
    (mmpretrain's datasets import through tools/torchvision_stub.py where it is missing)."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    for label in range(2):
        folder = tmp_path / 'data' / 'train' / f'class{label}'
        folder.mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(folder / f'{i}.png'), (rng.random((48, 64, 3)) * 255).astype(np.uint8))
    def loader(pipeline):  # the folder dataset with one of the recipe's pipelines
        return ("dict(batch_size=4, num_workers=0, persistent_workers=False, dataset=dict("
                f"_delete_=True, type='CustomDataset', data_root={str(tmp_path / 'data')!r}, "
                "data_prefix='train', pipeline={{_base_." + pipeline + "}}))")
    config = tmp_path / 'recipe.py'
    config.write_text(
        f"_base_ = [{str(REPO / 'configs/imagenet/defmamba_t_in1k.py')!r}]\n"
        f"train_dataloader = {loader('train_pipeline')}\n"
        f"test_dataloader = {loader('test_pipeline')}\n"
        "test_evaluator = dict(type='Accuracy', topk=(1, ))\n"
        "train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=10)\n"
        "val_dataloader = val_evaluator = val_cfg = None\n"
        "param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=True, end=10)]\n"
        "default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=10))\n")
    tiny = ['model.backbone.dims=[16,32,32,32]', 'model.backbone.depths=[1,1,1,1]',
            'model.head.in_channels=32']
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    work_dir = tmp_path / 'work'
    result = subprocess.run(
        [sys.executable, 'tools/train.py', str(config), '--no-amp', '--work-dir', str(work_dir),
         '--cfg-options', *tiny, 'randomness.seed=0'],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert 'finished training at iteration 2' in result.stdout
    rows = [json.loads(line) for f in work_dir.glob('*/vis_data/scalars.json')
            for line in f.read_text().splitlines()]
    losses = [row['loss'] for row in rows if 'loss' in row]
    assert len(losses) == 2 and all(np.isfinite(losses)), losses

    result = subprocess.run(
        [sys.executable, 'tools/test.py', str(config), str(work_dir / 'epoch_1.pth'),
         '--work-dir', str(tmp_path / 'test'), '--cfg-options', *tiny],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    top1 = re.search(r'accuracy/top1: ([0-9.]+)', result.stdout + result.stderr)
    assert top1 and 0.0 <= float(top1.group(1)) <= 100.0, result.stdout[-2000:]


def test_a_missing_folder_of_a_folder_dataset_is_named(tmp_path):
    """mmpretrain's folder datasets take ``data_prefix`` as one string: the early data check
    names it (it iterated a dict's items and failed with an AttributeError)."""
    from mmdefscan.engine import check_data_paths
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='CustomDataset', data_root=str(tmp_path), data_prefix='train'))))
    with pytest.raises(FileNotFoundError,
                       match=r'train_dataloader\.dataset\.data_prefix: .*train does not exist'):
        check_data_paths(cfg)
    (tmp_path / 'train').mkdir()
    check_data_paths(cfg)
