"""tools/analysis/get_flops.py: MMEngine's counter plus the selective scan, counted once."""
import subprocess
import sys

import pytest
import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.complexity_analysis import _DEFAULT_SUPPORTED_FLOP_OPS

import mmdefscan.ops.selective_scan as scan_module
from _refs import REPO
from mmdefscan.models.backbones import DAMamba, DefMamba, SpatialMamba
from mmdefscan.utils.complexity import (SCAN_OP, model_complexity, selective_scan_flops,
                                        selective_scan_flops_ref)

SMALL = {
    'defmamba': (DefMamba, dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1])),
    'spatialmamba': (SpatialMamba, dict(dims=16, depths=[1, 1, 1, 1])),
    'damamba': (DAMamba, dict(arch=dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                                        mlp_ratios=[4, 4, 3, 3], head_dim=16))),
}


def test_formulas():
    assert selective_scan_flops(2, 3, 5, 7) == 9 * 2 * 5 * 3 * 7 + 2 * 3 * 5
    assert selective_scan_flops(2, 3, 5, 1, with_d=False, with_z=True) == 9 * 30 + 30
    assert selective_scan_flops_ref(1, 4, 10, 16) == 4 * 10 * 16 * 7 // 2 + 40


@pytest.mark.parametrize('model', list(SMALL))
def test_each_scan_call_is_counted_once(model):
    cls, kwargs = SMALL[model]
    backbone = cls(**kwargs).eval()
    x = torch.randn(1, 3, 64, 64)
    result = model_complexity(backbone, (x, ))
    sides = [16, 8, 4, 2]
    widths = [d * {'defmamba': 3, 'spatialmamba': 2, 'damamba': 1}[model] for d in backbone.dims]
    calls = result['scan_calls']
    assert [(c['dim'], c['length']) for c in calls] == [(w, s * s) for w, s in zip(widths, sides)]
    assert all(c['n_state'] == (16 if model == 'defmamba' else 1) for c in calls)
    assert all(c['with_d'] == (model == 'defmamba') and not c['with_z'] for c in calls)
    assert result['scan_flops'] == sum(selective_scan_flops(**c) for c in calls) > 0
    assert result['params'] == sum(p.numel() for p in backbone.parameters())
    # without the routing the scan's element-wise internals count nothing: the rest is the same
    assert scan_module.selective_scan_ref.__name__ == 'selective_scan_ref'
    assert SCAN_OP not in _DEFAULT_SUPPORTED_FLOP_OPS
    plain = FlopAnalyzer(backbone, (x, ))
    plain.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        assert plain.total() == result['flops'] - result['scan_flops']
    if model == 'defmamba':
        assert 'prim::PythonOp.DeformablePathSort' in result['uncounted']  # the token sort


def test_command_line(tmp_path):
    result = subprocess.run([sys.executable, 'tools/analysis/get_flops.py',
                             'configs/imagenet/damamba_t_in1k.py', '--shape', '64', '64'],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert 'input: 1 x 3 x 64 x 64' in out and 'params: 25.44 M (backbone 24.93 M)' in out
    assert 'selective scan (VMamba: 9 B L D N + B D L per call)' in out
    assert 'not counted (no FLOP formula):' in out
