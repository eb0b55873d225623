"""The torchvision stand-in is part of the development environment, not of the library: importing
mmdefscan patches nothing; tools/setup_env.sh installs the stand-in only where torchvision does
not import, and with it mmpretrain imports and builds a classifier on our backbone."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from _refs import REPO

STUB = REPO / 'tools/torchvision_stub.py'

# A fresh interpreter in which torchvision cannot be found, whatever the environment holds.
HIDE_TORCHVISION = '''
import importlib.machinery, importlib.util, sys
_find = importlib.machinery.PathFinder.find_spec.__func__
def _hidden(cls, name, path=None, target=None):
    return None if name.split('.')[0] == 'torchvision' else _find(cls, name, path, target)
importlib.machinery.PathFinder.find_spec = classmethod(_hidden)
assert importlib.util.find_spec('torchvision') is None
'''


def run_python(code, **env):
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=dict(os.environ, **env))


def test_importing_mmdefscan_installs_no_torchvision():
    result = run_python(HIDE_TORCHVISION + '''
import mmdefscan
print(importlib.util.find_spec('torchvision'), 'torchvision' in sys.modules)
''')
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['None', 'False']


def test_stub_box_ops_and_clear_errors():
    """The stand-in as installed (module name torchvision), loaded where torchvision is hidden."""
    result = run_python(HIDE_TORCHVISION + f'''
import torch
spec = importlib.util.spec_from_file_location('torchvision', {str(STUB)!r})
module = importlib.util.module_from_spec(spec)
sys.modules['torchvision'] = module
spec.loader.exec_module(module)
from torchvision.ops import boxes
a = torch.tensor([[0., 0., 2., 2.], [1., 1., 3., 3.]])
torch.testing.assert_close(boxes.box_iou(a, a), torch.tensor([[1., 1 / 7], [1 / 7, 1.]]))
giou = boxes.generalized_box_iou(a, a)
torch.testing.assert_close(giou, torch.tensor([[1., 1 / 7 - 2 / 9], [1 / 7 - 2 / 9, 1.]]))
import torchvision
print(torchvision.__version__)
try:
    torchvision.models
except AttributeError as err:
    print(err)
import mmdefscan  # mmpretrain beside transformers 5 (utils/mmpretrain_compat.py)
from mmpretrain.datasets.transforms import MAERandomResizedCrop, RandomResizedCrop
RandomResizedCrop(scale=32)  # mmpretrain's own crop, the ImageNet recipes' one
try:
    MAERandomResizedCrop(size=32)
except ImportError as err:
    print(err)
''')
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[-3] == '0.0.0+mmdefscan.stub'
    assert lines[-2].startswith('torchvision.models is unavailable: torchvision is not installed')
    assert lines[-1] == 'MAERandomResizedCrop needs torchvision, which is not installed'


def test_setup_installs_the_stub_only_where_torchvision_does_not_import(tmp_path):
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True,
                   timeout=120)
    site = subprocess.run([str(venv / 'bin/python'), '-c', 'import sysconfig; '
                           "print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                          text=True, check=True).stdout.strip()
    installed = os.path.join(site, 'torchvision', '__init__.py')
    # a torchvision that imports (here a fake one on PYTHONPATH) is left alone
    (tmp_path / 'other' / 'torchvision').mkdir(parents=True)
    (tmp_path / 'other' / 'torchvision' / '__init__.py').write_text('')
    setup = ['bash', str(REPO / 'tools/setup_env.sh'), '--torchvision-stub']
    env = dict(os.environ, MMDEFSCAN_VENV=str(venv))
    done = subprocess.run(setup, capture_output=True, text=True, timeout=120,
                          env=dict(env, PYTHONPATH=str(tmp_path / 'other')))
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(installed) and done.stdout == ''
    done = subprocess.run(setup, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert open(installed).read() == STUB.read_text()
    assert done.stdout.startswith('[setup] torchvision does not import: installed the stand-in')


def test_mmpretrain_classifier_builds_and_computes_a_loss():
    assert importlib.util.find_spec('mmpretrain') is not None
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='DefMamba', dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], out_indices=(3,)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=5, in_channels=64,
                  loss=dict(type='CrossEntropyLoss'))))
    from mmpretrain.structures import DataSample
    samples = [DataSample().set_gt_label(i) for i in (1, 3)]
    losses = model(torch.randn(2, 3, 64, 64), samples, mode='loss')
    assert torch.isfinite(losses['loss']) and losses['loss'] > 0


@pytest.mark.parametrize('version,disabled', [('5.0.1', True), ('4.57.6', False)])
def test_mmpretrain_models_import_beside_transformers_5(version, disabled):
    """With transformers 5 (faked: its version as the package metadata reports it) mmpretrain's
    multimodal models are switched off before mmpretrain.models is imported, so the
    classification models import; with an older transformers the switch is left alone."""
    code = f'''
import importlib.metadata
real = importlib.metadata.version
importlib.metadata.version = lambda name: {version!r} if name == 'transformers' else real(name)
import mmdefscan
from mmpretrain.utils import dependency
from mmdefscan.utils.mmpretrain_compat import disable_multimodal_if_incompatible
dependency.WITH_MULTIMODAL = 'as mmpretrain found it'
print(disable_multimodal_if_incompatible(), repr(dependency.WITH_MULTIMODAL))
import mmpretrain.models
from mmpretrain.registry import MODELS
assert MODELS.get('ImageClassifier') is not None
'''
    result = run_python(code)
    if not disabled:  # mmpretrain then takes its own branch, which needs a real transformers
        assert result.stdout.splitlines()[-1] == "False 'as mmpretrain found it'"
        return
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == 'True False'
