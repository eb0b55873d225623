"""tools/model_converters/: official checkpoints in, strictly loadable mmdefscan checkpoints out.

The official checkpoints are synthetic: every key of the official key lists
(``*_keys_all_variants.json``, ``classifier`` = the released ImageNet layout) with a random tensor
of the listed shape, saved the way the official code saves them.
"""
import argparse
import contextlib
import functools
import json
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import mmdefscan  # noqa: F401  (allow-list for MMEngine's own checkpoint objects)
from _refs import REPO, fixture_dir
from mmdefscan.models.backbones import DAMamba, DefMamba, SpatialMamba
from mmdefscan.models.checkpoint import CheckpointError, fit_state_dict
from mmdefscan.models.converters import (FAMILIES, InertObject, convert_checkpoint,
                                         convert_state_dict, load_untrusted_checkpoint)

CLASSES = {'defmamba': DefMamba, 'spatialmamba': SpatialMamba, 'damamba': DAMamba}
MODELS = list(CLASSES)
HEAD_KEYS = {'defmamba': 4, 'spatialmamba': 4, 'damamba': 2}  # classifier.*, norm/head.*, head.fc.*


@functools.lru_cache(maxsize=None)
def key_list(model, variant='tiny', layout='classifier'):
    spec = json.loads((fixture_dir() / f'{model}_keys_all_variants.json').read_text())
    keys = spec['variants'][variant][layout]['keys']
    return tuple((k, tuple(shape), dtype) for k, shape, dtype in keys)


def official_state(model, variant='tiny', layout='classifier', seed=0):
    """Random tensors with the official keys, shapes and dtypes."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) if dtype.startswith('float')
            else torch.randint(0, 100, shape, generator=gen, dtype=getattr(torch, dtype))
            for k, shape, dtype in key_list(model, variant, layout)}


@contextlib.contextmanager
def fake_yacs():
    """A stand-in ``yacs.config.CfgNode`` (a dict subclass with attributes, pickled like yacs)
    that exists only while the checkpoint is saved: loading must not need it."""
    class CfgNode(dict):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.__dict__['__immutable__'] = True

    CfgNode.__module__, CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
    yacs, config = types.ModuleType('yacs'), types.ModuleType('yacs.config')
    config.CfgNode, yacs.config = CfgNode, config
    sys.modules.update({'yacs': yacs, 'yacs.config': config})
    try:
        yield CfgNode
    finally:
        del sys.modules['yacs'], sys.modules['yacs.config']


def save_like_official_trainer(path, state, ema_state):
    """What the Swin-style main.py of all three repositories saves: model,
    EMA, optimizer, scheduler, AMP scaler, accuracy, epoch, the yacs config and args."""
    with fake_yacs() as CfgNode:
        config = CfgNode(MODEL=CfgNode(TYPE='vssm', DROP_PATH_RATE=0.2),
                         TRAIN=CfgNode(BASE_LR=5e-4, EPOCHS=300))
        some = next(iter(state.values()))
        torch.save({'model': state, 'model_ema': ema_state,
                    'optimizer': {'state': {0: {'step': torch.tensor(3.0),
                                                'exp_avg': torch.zeros_like(some)}},
                                  'param_groups': [{'lr': 1e-3, 'weight_decay': 0.05,
                                                    'params': [0]}]},
                    'lr_scheduler': {'t_initial': 300, 'base_values': [1e-3]},
                    'max_accuracy': np.float64(83.5), 'scaler': {'scale': 65536.0},
                    'epoch': 299, 'config': config,
                    'args': argparse.Namespace(batch_size=128, model_ema=True)}, path)


@pytest.fixture(scope='module', params=MODELS)
def converted(request, tmp_path_factory):
    """An official-trainer checkpoint of the tiny variant, converted once per model."""
    model = request.param
    tmp = tmp_path_factory.mktemp(model)
    state = official_state(model)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    save_like_official_trainer(tmp / 'official.pth', state, ema)
    lines = []
    convert_checkpoint(tmp / 'official.pth', tmp / 'converted.pth', model, log=lines.append)
    return types.SimpleNamespace(model=model, dir=tmp, state=state, ema=ema, lines=lines,
                                 src=tmp / 'official.pth', dst=tmp / 'converted.pth')


def init_from(model, path, arch='tiny', **kwargs):
    backbone = CLASSES[model](arch=arch, init_cfg=dict(type='Pretrained', checkpoint=str(path)),
                              **kwargs)
    backbone.init_weights()
    return backbone


@pytest.mark.parametrize('model', MODELS)
def test_every_variant_is_recognised_from_its_keys(model):
    """Shapes alone give tiny / small / base, from the ImageNet layout and the backbone layout."""
    family = FAMILIES[model]
    for variant in ('tiny', 'small', 'base'):
        for layout in ('classifier', 'backbone'):
            shapes = {k: s for k, s, _ in key_list(model, variant, layout)
                      if not k.startswith(family.head_prefixes)}
            assert family.infer(shapes)[0] == variant, (variant, layout)


def test_trainer_checkpoint_converts_with_a_report(converted):
    text = '\n'.join(converted.lines)
    assert 'yacs' not in sys.modules  # nothing of the foreign classes was imported
    assert 'made the objects of 2 foreign class(es) inert (no code ran): argparse.Namespace, ' \
           'yacs.config.CfgNode' in text
    assert "weights: 'model'" in text and '--ema converts those' in text
    for entry in ('optimizer (dict)', 'lr_scheduler (dict)', 'scaler (dict)', 'epoch (int)',
                  'config (yacs.config.CfgNode, inert)', 'args (argparse.Namespace, inert)'):
        assert entry in text
    assert f"dropped {HEAD_KEYS[converted.model]} classification-head keys" in text
    assert "arch='tiny' (inferred from the key shapes)" in text
    assert 'verified:' in text and '0 missing, 0 unexpected' in text
    if converted.model == 'damamba':  # its stage norms are in the checkpoint already
        assert 'output-norm' not in text
    else:
        assert 'added 8 output-norm keys at their init values' in text
    written = torch.load(converted.dst, weights_only=True)  # plain tensors and values only
    assert written['meta']['arch'] == 'tiny' and written['meta']['weights'] == 'model'


def test_converted_checkpoint_loads_with_zero_missing_and_unexpected(converted):
    written = torch.load(converted.dst, weights_only=True)['state_dict']
    fresh = CLASSES[converted.model](arch='tiny')
    assert set(written) == set(fresh.state_dict())  # exactly the backbone's keys
    _, notes = fit_state_dict(fresh, written, head_prefixes=fresh.head_prefixes,
                              optional_prefixes=fresh.optional_prefixes)
    assert notes == []  # nothing dropped, nothing left at init
    own = init_from(converted.model, converted.dst).state_dict()  # the init_cfg path
    for k, v in converted.state.items():
        if k in own:
            torch.testing.assert_close(own[k], v, msg=k)
        else:
            assert k.startswith(FAMILIES[converted.model].head_prefixes), k
    for k, v in own.items():
        if k.startswith('outnorm'):
            init = torch.ones_like(v) if k.endswith('weight') else torch.zeros_like(v)
            assert torch.equal(v, init), k


def test_ema_flag_converts_the_ema_weights(converted, tmp_path):
    lines = []
    convert_checkpoint(converted.src, tmp_path / 'ema.pth', converted.model, ema=True,
                       log=lines.append)
    assert any("weights: 'model_ema'" in line for line in lines)
    own = init_from(converted.model, tmp_path / 'ema.pth').state_dict()
    key = next(k for k, v in converted.ema.items() if k in own and v.is_floating_point())
    torch.testing.assert_close(own[key], converted.ema[key])


def test_truncated_files_are_named(converted, tmp_path):
    for name, path in (('official', converted.src), ('converted', converted.dst)):
        data = path.read_bytes()
        cut = tmp_path / f'{name}_cut.pth'
        cut.write_bytes(data[:len(data) // 2])
        with pytest.raises(CheckpointError, match=rf'{cut}: not a readable checkpoint '
                                                  r'\(truncated or corrupt file\?\)'):
            convert_checkpoint(cut, tmp_path / 'x.pth', converted.model, log=lambda _: None)
        with pytest.raises(CheckpointError, match=rf'{cut}: not a readable checkpoint'):
            init_from(converted.model, cut)
    assert not (tmp_path / 'x.pth').exists()


# (missing key, mis-shaped key) per model; the shape is the official one of the tiny variant
CORRUPT = {'defmamba': ('layers.1.blocks.0.mlp.fc2.bias', 'patch_embed.0.weight', (24, 3, 3, 3)),
           'spatialmamba': ('layers.2.blocks.3.self_attention.Ds', 'patch_embed.conv1.conv.weight',
                            (32, 3, 3, 3)),
           'damamba': ('stages.3.blocks.4.mlp.conv.conv_constant', 'stem.0.weight', (40, 3, 3, 3))}


@pytest.mark.parametrize('model', MODELS)
def test_corrupt_state_dicts_are_errors_naming_the_key(model):
    missing, reshaped, shape = CORRUPT[model]
    state = official_state(model)
    del state[missing]
    with pytest.raises(CheckpointError, match=rf'1 missing: {re.escape(missing)}$'):
        convert_state_dict(state, model)
    state = official_state(model)
    state[reshaped] = torch.zeros(7, 3, 3, 3)
    official = ', '.join(map(str, shape))
    with pytest.raises(CheckpointError, match=rf'1 shape mismatches: {re.escape(reshaped)} '
                                              rf'\(7, 3, 3, 3\) vs \({official}\)'):
        convert_state_dict(state, model)
    state = official_state(model)
    extra = 'stages.9.extra' if model == 'damamba' else 'layers.9.extra'
    state[extra] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=rf'1 unexpected: {re.escape(extra)}$'):
        convert_state_dict(state, model)


@pytest.mark.parametrize('model', MODELS)
def test_wrong_arch_or_family_is_refused(model):
    state = official_state(model)
    with pytest.raises(CheckpointError, match='does not fit'):
        convert_state_dict(state, model, arch='small')
    other = MODELS[(MODELS.index(model) + 1) % 3]
    with pytest.raises(CheckpointError, match=f'not a {FAMILIES[other].name} checkpoint'):
        convert_state_dict(state, other)


@pytest.mark.parametrize('model', MODELS)
def test_released_flat_and_downstream_layouts(model, tmp_path):
    """A flat state dict with the head (DAMamba's release, getweight.py) and an MMEngine
    detector checkpoint (backbone. prefix, neck / heads, meta, message hub)."""
    from mmengine.logging import MessageHub
    torch.save(official_state(model, seed=1), tmp_path / 'flat.pth')
    lines = []
    convert_checkpoint(tmp_path / 'flat.pth', tmp_path / 'a.pth', model, log=lines.append)
    assert "weights: '(flat)'" in lines[0]
    init_from(model, tmp_path / 'a.pth')

    hub = MessageHub.get_instance('converter-test')
    hub.update_scalar('train/loss', 0.5)
    backbone = official_state(model, layout='backbone', seed=2)
    state = {f'backbone.{k}': v for k, v in backbone.items()}
    state.update({'neck.lateral_convs.0.conv.weight': torch.zeros(256, 64, 1, 1),
                  'roi_head.bbox_head.fc_cls.weight': torch.zeros(81, 1024)})
    torch.save({'meta': {'epoch': 12, 'dataset_meta': {'classes': ('a', 'b')}},
                'state_dict': state, 'message_hub': hub.state_dict(),
                'optimizer': {'state': {}, 'param_groups': []}}, tmp_path / 'det.pth')
    lines = []
    convert_checkpoint(tmp_path / 'det.pth', tmp_path / 'b.pth', model, log=lines.append)
    text = '\n'.join(lines)
    assert "kept the 'backbone.' keys (dropped 2 keys of neck, roi_head)" in text
    assert 'inert' not in text and 'output-norm' not in text  # weights_only read it; norms kept
    own = init_from(model, tmp_path / 'b.pth').state_dict()
    assert all(torch.equal(own[k], v) for k, v in backbone.items())


@pytest.mark.parametrize('model', MODELS)
def test_classifier_layout_loads_into_the_imagenet_config(model, tmp_path):
    """--classifier: the official final norm becomes backbone.outnorm3, the head head.fc; the
    result loads strictly into the ImageClassifier of configs/imagenet/<model>_t_in1k.py."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    state = official_state(model, seed=3)
    torch.save({'model': state}, tmp_path / 'cls.pth')
    convert_checkpoint(tmp_path / 'cls.pth', tmp_path / 'mmpretrain.pth', model, classifier=True,
                       log=lambda _: None)
    cfg = Config.fromfile(str(REPO / f'configs/imagenet/{model}_t_in1k.py'))
    init_default_scope('mmpretrain')
    classifier = PRETRAIN_MODELS.build(cfg.model)
    converted = torch.load(tmp_path / 'mmpretrain.pth', weights_only=True)['state_dict']
    classifier.load_state_dict(converted, strict=True)
    head = FAMILIES[model].head
    torch.testing.assert_close(classifier.head.fc.weight, state[head + 'weight'])
    if FAMILIES[model].final_norm:
        torch.testing.assert_close(classifier.backbone.outnorm3.weight,
                                   state[FAMILIES[model].final_norm + 'weight'])


def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path):
    import os
    marker = tmp_path / 'ran'

    class System:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    class Eval:
        def __reduce__(self):
            return eval, (f"open({str(marker)!r}, 'w')",)

    for name, payload in (('system', System()), ('eval', Eval())):
        torch.save({'model': {'w': torch.zeros(1)}, 'args': payload}, tmp_path / f'{name}.pth')
        with pytest.raises(CheckpointError, match=r'refusing (posix|os|nt)\.system|refusing '
                                                  r'builtins\.eval'):
            load_untrusted_checkpoint(tmp_path / f'{name}.pth')
    assert not marker.exists()


def test_inert_records_keep_the_pickled_data(tmp_path):
    with fake_yacs() as CfgNode:
        torch.save({'config': CfgNode(MODEL=CfgNode(NAME='x')), 'w': torch.ones(2)},
                   tmp_path / 'c.pth')
    obj, inert = load_untrusted_checkpoint(tmp_path / 'c.pth')
    assert set(inert) == {'yacs.config.CfgNode'}
    config = obj['config']
    assert isinstance(config, InertObject) and config.pickled_name == 'yacs.config.CfgNode'
    assert config['MODEL']['NAME'] == 'x' and config.state == {'__immutable__': True}
    assert torch.equal(obj['w'], torch.ones(2))


def test_command_line_tools(tmp_path):
    """One conversion and one refusal through the scripts (DAMamba builds fastest)."""
    state = official_state('damamba', seed=4)
    save_like_official_trainer(tmp_path / 'official.pth', state, state)
    python = sys.executable
    tool = REPO / 'tools/model_converters/damamba2mmdefscan.py'
    result = subprocess.run([python, str(tool), str(tmp_path / 'official.pth'),
                             str(tmp_path / 'o.pth')],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "verified: DAMamba(arch='tiny')" in result.stdout
    wrong = REPO / 'tools/model_converters/defmamba2mmdefscan.py'
    result = subprocess.run([python, str(wrong), str(tmp_path / 'official.pth'),
                             str(tmp_path / 'p.pth')],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        'error: CheckpointError: not a DefMamba checkpoint')
    assert not (tmp_path / 'p.pth').exists()
