"""tools/analysis/get_flops.py: MMEngine's counter plus the selective scan, counted once; every
matmul counted (the published FLOPs), and the operators it cannot count pinned."""
import functools
import subprocess
import sys

import pytest
import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.complexity_analysis import _DEFAULT_SUPPORTED_FLOP_OPS

import mmdefscan.ops.selective_scan as scan_module
from _refs import REPO
from mmdefscan.models.backbones import DAMamba, DefMamba, SpatialMamba
from mmdefscan.models.layers import Mlp
from mmdefscan.utils.complexity import (SCAN_OP, model_complexity, selective_scan_flops,
                                        selective_scan_flops_ref)

BACKBONES = {'defmamba': DefMamba, 'spatialmamba': SpatialMamba, 'damamba': DAMamba}
SMALL = {
    'defmamba': dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1]),
    'spatialmamba': dict(dims=16, depths=[1, 1, 1, 1]),
    'damamba': dict(arch=dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], mlp_ratios=[4, 4, 3, 3],
                              head_dim=16)),
}
# What the counter cannot count, by backbone: element-wise operators, activations, padding,
# grid making and DefMamba's token sort (an autograd Function doing argsort + gather, no
# multiply-adds). Any other autograd Function here would hide its work from the count.
ELEMENTWISE = {'aten::add', 'aten::addcmul', 'aten::exp', 'aten::expand_as', 'aten::gelu',
               'aten::mul', 'aten::neg', 'aten::silu'}
UNCOUNTED = {
    'defmamba': ELEMENTWISE | {'aten::div', 'aten::empty_like', 'aten::eye', 'aten::flip',
                               'aten::linspace', 'aten::mean', 'aten::meshgrid', 'aten::numpy_T',
                               'aten::reciprocal', 'aten::scatter_', 'aten::sigmoid', 'aten::sub',
                               'aten::tanh', 'prim::PythonOp.DeformablePathSort'},
    'spatialmamba': ELEMENTWISE | {'aten::pad'},
    'damamba': ELEMENTWISE | {'aten::div', 'aten::meshgrid', 'aten::reciprocal', 'aten::sub',
                              'aten::unflatten'},
}
# Published ImageNet FLOPs (G, 224 x 224) of the official READMEs.
PUBLISHED = {('defmamba', 'tiny'): 1.3, ('defmamba', 'small'): 5.0, ('defmamba', 'base'): 8.9,
             ('spatialmamba', 'tiny'): 4.5, ('spatialmamba', 'small'): 7.1,
             ('spatialmamba', 'base'): 15.8,
             ('damamba', 'tiny'): 4.8, ('damamba', 'small'): 10.3, ('damamba', 'base'): 16.3}


@functools.lru_cache(maxsize=None)
def small_model(model):
    return BACKBONES[model](**SMALL[model]).eval()


@functools.lru_cache(maxsize=None)
def small_complexity(model):
    return model_complexity(small_model(model), (torch.randn(1, 3, 64, 64), ))


def test_formulas():
    assert selective_scan_flops(2, 3, 5, 7) == 9 * 2 * 5 * 3 * 7 + 2 * 3 * 5
    assert selective_scan_flops(2, 3, 5, 1, with_d=False, with_z=True) == 9 * 30 + 30
    assert selective_scan_flops_ref(1, 4, 10, 16) == 4 * 10 * 16 * 7 // 2 + 40


@pytest.mark.parametrize('model', list(SMALL))
def test_each_scan_call_is_counted_once(model):
    backbone = small_model(model)
    result = small_complexity(model)
    sides = [16, 8, 4, 2]
    widths = [d * {'defmamba': 3, 'spatialmamba': 2, 'damamba': 1}[model] for d in backbone.dims]
    calls = result['scan_calls']
    assert [(c['dim'], c['length']) for c in calls] == [(w, s * s) for w, s in zip(widths, sides)]
    assert all(c['n_state'] == (16 if model == 'defmamba' else 1) for c in calls)
    assert all(c['with_d'] == (model == 'defmamba') and not c['with_z'] for c in calls)
    assert result['scan_flops'] == sum(selective_scan_flops(**c) for c in calls) > 0
    assert result['params'] == sum(p.numel() for p in backbone.parameters())
    # without the routing the scan's element-wise internals count nothing: the rest is the same
    # (evaluation's fused state-fusion kernel apart)
    assert scan_module.selective_scan_ref.__name__ == 'selective_scan_ref'
    assert SCAN_OP not in _DEFAULT_SUPPORTED_FLOP_OPS
    plain = FlopAnalyzer(backbone, (torch.randn(1, 3, 64, 64), ))
    plain.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        assert plain.total() == (result['flops'] - result['scan_flops']
                                 + result['fused_fusion_extra'])
    assert (result['fused_fusion_extra'] > 0) == (model == 'spatialmamba')


@pytest.mark.parametrize('model', list(SMALL))
def test_uncounted_operators_are_pinned(model):
    """A new autograd Function (a fused op: ``prim::PythonOp.<name>``) or a new uncounted
    operator shows here: the counter sees none of the work inside it."""
    assert set(small_complexity(model)['uncounted']) == UNCOUNTED[model]


@pytest.mark.parametrize('requires_grad', [False, True])
def test_mlp_counts_both_linears(requires_grad):
    """GELU and fc2 run as one autograd Function while autograd records; the counter must still
    see fc2 (with and without grad, as MMEngine's tools may trace either way)."""
    mlp = Mlp(8, 32)
    x = torch.randn(1, 5, 8, requires_grad=requires_grad)
    analyzer = FlopAnalyzer(mlp, (x, ))
    analyzer.unsupported_ops_warnings(False)
    assert analyzer.total() == 2 * 5 * 8 * 32
    assert analyzer.by_module()['fc2'] == 5 * 8 * 32
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x))),
                                   rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize('model,arch', list(PUBLISHED))
def test_published_flops_at_224(model, arch):
    """Every variant within 3 % of its paper at 224 x 224, counted by the paper's convention:
    DefMamba's scan by its own ``flops_selective_scan_ref``, the others' by VMamba's formula;
    Spatial-Mamba's state fusion as the dilated convolutions of training (all as get_flops.py
    prints them)."""
    with torch.no_grad():
        backbone = BACKBONES[model](arch=arch).eval()
    result = model_complexity(backbone, (torch.randn(1, 3, 224, 224), ))
    flops = result['flops']
    if model == 'defmamba':
        flops += sum(selective_scan_flops_ref(**c) - selective_scan_flops(**c)
                     for c in result['scan_calls'])
    assert flops / 1e9 == pytest.approx(PUBLISHED[model, arch], rel=0.03)
    assert set(result['uncounted']) == UNCOUNTED[model]


def test_command_line(tmp_path):
    result = subprocess.run([sys.executable, 'tools/analysis/get_flops.py',
                             'configs/imagenet/spatialmamba_t_in1k.py', '--shape', '64', '64'],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert 'input: 1 x 3 x 64 x 64' in out
    assert 'selective scan (VMamba: 9 B L D N + B D L per call)' in out
    assert 'state fusion counted as the dilated 3x3 convolutions of training' in out
    assert 'not counted (no FLOP formula):' in out and 'PythonOp' not in out
