"""mmdefscan/analysis/scan_attention.py and tools/analysis/scan_attention.py: the closed-form
implicit attention of every backbone's scans against a brute-force loop, and the effective
receptive field against finite differences."""
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import mmdefscan  # noqa: F401
from _refs import REPO
from mmdefscan.analysis import effective_receptive_field, record_scan_attention, ssm_rows
from mmdefscan.models.backbones.damamba import DASSM
from mmdefscan.models.backbones.defmamba import PERMUTED_DIRECTIONS, DeformableSSM
from mmdefscan.models.backbones.spatialmamba import StructureAwareSSM
from mmdefscan.models.scan_paths import record_module_inputs
from mmdefscan.ops import adaptive_sample, selective_scan_ref
from mmdefscan.ops.scan_merge import merge_directions
from mmdefscan.registry import MODELS

TINY = dict(dims=[16, 32, 32, 32], depths=[1, 1, 1, 1])
DAMAMBA = dict(TINY, type='DAMamba', head_dim=8, norm_cfg=dict(type='BN'))
SPATIAL = dict(type='SpatialMamba', dims=8, depths=[1, 1, 1, 1])


def test_ssm_rows_are_the_rows_of_the_scan():
    """Column s of the scan's matrix is its response to a unit input at s."""
    torch.manual_seed(0)
    dim, states, length = 3, 4, 10
    delta = torch.rand(dim, length, dtype=torch.float64)
    A = -torch.rand(dim, states, dtype=torch.float64)
    B, C = torch.randn(2, states, length, dtype=torch.float64)
    D = torch.randn(dim, dtype=torch.float64)
    queries = torch.tensor([0, 4, 9])
    columns = [selective_scan_ref(torch.eye(length, dtype=torch.float64)[s].expand(1, dim, -1),
                                  delta[None], A, B[None], C[None], D)[0, :, queries]
               for s in range(length)]
    torch.testing.assert_close(ssm_rows(delta, A, B, queries, C, D),
                               torch.stack(columns, -1), rtol=1e-12, atol=1e-12)


def _defmamba_response(module, tokens):
    """The merged scan output (B, D, L) of DefMamba's mixer as a function of its scanned map,
    with the points, order, step sizes, B and C of ``tokens`` held fixed."""
    x, _ = module.scan_input(tokens)
    path = module.DS.points_and_keys(x) if 'deformable' in module.directions else None
    xs, order = module.sequences(x, path)
    parameters = module.ssm_parameters(xs)
    names = ['permuted' if d in PERMUTED_DIRECTIONS else d for d in module.directions]
    return x, lambda v: merge_directions(module.ssm(module.sequences(v, path)[0], *parameters),
                                         order, names)


def _spatialmamba_response(module, tokens):
    x, _ = module.scan_input(tokens)
    parameters = module.ssm_parameters(x.flatten(2))
    return x, lambda v: module.read_out(v.flatten(2), *v.shape[2:], *parameters).flatten(
        1, 2).transpose(1, 2)


def _damamba_response(module, z):
    x = module.scan_input(z)
    if module.da_scan is None:
        def sample(v):
            return v
    else:
        offsets = module.da_scan.predict_offsets(z)

        def sample(v):
            return adaptive_sample(v, offsets, module.da_scan.groups)
    parameters = module.ssm_parameters(sample(x).flatten(2))
    return x, lambda v: module.read_out(sample(v).flatten(2), *parameters)


RESPONSES = {DeformableSSM: _defmamba_response, StructureAwareSSM: _spatialmamba_response,
             DASSM: _damamba_response}


@pytest.mark.parametrize('cfg', [
    dict(TINY, type='DefMamba'),
    dict(TINY, type='DefMamba', directions=('deformable', ), deformable_tokens=False),
    dict(TINY, type='DefMamba', directions=('backward', 'continuous')),
    dict(TINY, type='DefMamba', directions=('forward', 'local'), local_window=3),
    dict(SPATIAL),
    dict(SPATIAL, fusion_dilations=(2, )),
    dict(SPATIAL, fusion_dilations=None),
    dict(DAMAMBA),
    dict(DAMAMBA, adaptive_scan=False),
], ids=['defmamba', 'defmamba-db-only', 'defmamba-bb-continuous', 'defmamba-fb-local',
        'spatialmamba', 'spatialmamba-dilation-2', 'spatialmamba-no-fusion', 'damamba',
        'damamba-raster'])
def test_closed_form_equals_perturbing_one_token_at_a_time(cfg):
    """For the first mixer of a tiny backbone (float64), every pixel of the scanned map in turn
    is raised by one, with everything data-dependent held at the image's values; the change of
    the mixer's scan output at two query tokens is the closed-form row."""
    torch.manual_seed(0)
    backbone = MODELS.build(cfg).double()
    for module in backbone.modules():  # non-zero DAMamba offsets, so the points are off-grid
        if isinstance(module, DASSM) and module.da_scan is not None:
            torch.nn.init.normal_(module.da_scan.offset.weight, std=0.5)
    image = torch.randn(1, 3, 32, 48, dtype=torch.float64)
    points = [(13, 21), (31, 2)]
    attention = record_scan_attention(backbone, image, points)
    assert len(attention) == 4 and attention[0].rows.shape[2:] == (8, 12)
    first = attention[0]
    _, module, tokens = record_module_inputs(backbone, image, tuple(RESPONSES))[0]
    assert first.queries.tolist() == [[3, 5], [7, 0]] and first.stride == (4.0, 4.0)
    with torch.no_grad():
        x, response = RESPONSES[type(module)](module, tokens)
        base = response(x)
        width = x.shape[3]
        index = first.queries[:, 0] * width + first.queries[:, 1]
        brute = torch.zeros_like(first.rows)
        for pixel in range(x.shape[2] * width):
            raised = x.clone()
            raised.flatten(2)[:, :, pixel] += 1
            brute[..., pixel // width, pixel % width] = (response(raised) - base)[0][:, index]
    assert brute.abs().amax() > 0.1
    torch.testing.assert_close(first.rows, brute, rtol=1e-9, atol=1e-10)


def test_effective_receptive_field_is_the_averaged_input_gradient():
    """Finite differences on the pixel the ERF ranks highest, and the average over two images."""
    torch.manual_seed(0)
    backbone = MODELS.build(dict(SPATIAL, out_indices=(1, ))).double()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    erf = effective_receptive_field(backbone, images)
    assert erf.shape == (1, 32, 32) and backbone.training
    torch.testing.assert_close(erf, (effective_receptive_field(backbone, images[:1])
                                     + effective_receptive_field(backbone, images[1:])) / 2)
    single = effective_receptive_field(backbone.eval(), images[:1])[0]
    y, x = divmod(int(single.argmax()), 32)

    def centre(image):
        with torch.no_grad():
            return torch.relu(backbone(image)[0][0, :, 2, 2]).sum()
    eps, total = 1e-6, 0.0
    for channel in range(3):
        step = torch.zeros_like(images[:1])
        step[0, channel, y, x] = eps
        total += abs(float(centre(images[:1] + step) - centre(images[:1] - step)) / (2 * eps))
    assert single[y, x] > 0
    assert total == pytest.approx(float(single[y, x]), rel=1e-5)


def run_tool(*args):
    return subprocess.run([sys.executable, 'tools/analysis/scan_attention.py', *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))


def test_the_tool_writes_pictures_and_numbers(tmp_path):
    """A DAMamba backbone checkpoint, two query tokens and the ERF over a folder of two images:
    one picture per module and token at the image's size, one per stage, the summary of both,
    and the numbers."""
    config = tmp_path / 'damamba.py'
    config.write_text(f'model = dict(backbone={DAMAMBA!r})\n')
    checkpoint = tmp_path / 'backbone.pth'
    torch.save(MODELS.build(DAMAMBA).state_dict(), checkpoint)
    images = tmp_path / 'images'
    images.mkdir()
    for i in range(2):
        cv2.imwrite(str(images / f'{i}.png'),
                    (np.random.default_rng(i).random((48, 96, 3)) * 255).astype(np.uint8))
    out = tmp_path / 'out'
    result = run_tool(config, images, '--checkpoint', checkpoint, '--prefix', '', '--size', 32,
                      '--tokens', '5,6', '31,60', '--erf', 2, '--out-dir', out,
                      '--device', 'cpu')
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r'^\| stages\.(\d)\.blocks\.0\.token_mixer \| (\d+)x(\d+) \| ([\d,]+) \|',
                      result.stdout, re.M)
    assert [(int(s), int(h), int(w), t) for s, h, w, t in rows] == [
        (s, 8 >> s, 16 >> s, t) for s in range(4) for t in ('5,6', '31,60')]
    drawn = sorted(p.name for p in out.glob('*.png'))
    assert len(drawn) == 13 and drawn[0] == '00_stages_0_blocks_0_token_mixer_q0.png'
    assert all(cv2.imread(str(out / name)).shape == (32, 64, 3) for name in drawn
               if name != 'summary.png')
    summary = cv2.imread(str(out / 'summary.png'))
    assert summary.shape == (2 * 32, 4 * 64, 3)
    assert np.array_equal(summary[:32, 64:128], cv2.imread(str(out / '01_stages_1_blocks_0_'
                                                                 'token_mixer_q0.png')))
    assert np.array_equal(summary[32:, 192:], cv2.imread(str(out / 'erf_stage3.png')))
    numbers = torch.load(out / 'scan_attention.pth')
    assert numbers['erf'].shape == (4, 32, 64) and numbers['tokens'].tolist() == [[5, 6], [31, 60]]
    first = numbers['modules'][0]
    assert first['attention'].shape == (2, 8, 16) and first['queries'].tolist() == [[1, 1], [7, 15]]


def test_the_tool_rejects_a_token_outside_the_image_in_one_line(tmp_path):
    config = tmp_path / 'spatialmamba.py'
    config.write_text(f'model = dict(backbone={SPATIAL!r})\n')
    image = tmp_path / 'image.png'
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    result = run_tool(config, image, '--size', 32, '--tokens', '40,3', '--out-dir', tmp_path,
                      '--device', 'cpu')
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        'error: ValueError: --tokens 40,3: outside the resized image (32x32)')
