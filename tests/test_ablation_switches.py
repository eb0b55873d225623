"""The ablation switches of the backbones (defaults: the official models, see the fixture
tests): each switch changes the structure as the paper describes, and the variant trains."""
import pytest
import torch

import mmdefscan  # noqa: F401
from mmdefscan.models.backbones.defmamba import fixed_scan_order
from mmdefscan.ops import DeformableScan, StateFusion
from mmdefscan.registry import MODELS

TINY = dict(type='DefMamba', dims=[16, 32, 32, 32], depths=[1, 1, 1, 1])


def keys(model, part):
    return sorted(k for k in model.state_dict() if part in k)


def forward_backward(model, size=(64, 64)):
    image = torch.randn(2, 3, *size, requires_grad=True)
    outs = model(image)
    sum(o.square().mean() for o in outs).backward()
    assert all(torch.isfinite(o).all() for o in outs) and image.grad.abs().sum() > 0
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused
    return outs


@pytest.mark.parametrize('directions, scans, deformable', [
    (('forward', 'backward', 'deformable'), 3, True),  # official
    (('forward', 'backward'), 2, False),                # FB-BB only
    (('deformable', ), 1, True),                        # DB only
    (('forward', 'backward', 'continuous'), 3, False),  # FB-BB + continuous scanning
    (('forward', 'backward', 'local'), 3, False),       # FB-BB + local scanning
])
def test_defmamba_directions(directions, scans, deformable):
    """One set of SSM parameters per direction; the deformable scan only with its direction."""
    model = MODELS.build(dict(TINY, directions=directions, local_window=2))
    op = model.layers[0].blocks[0].op
    assert op.directions == directions
    assert op.x_proj_weight.shape[0] == op.dt_projs_weight.shape[0] == scans
    assert op.A_logs.shape == (scans * 16, 16) and op.Ds.shape == (scans * 16, )
    assert bool(keys(model, '.op.DS.')) == deformable
    forward_backward(model)


def test_defmamba_directions_are_checked():
    for bad in [(), ('forward', 'forward'), ('sideways', ), ('deformable', 'local')]:
        with pytest.raises(ValueError, match='directions'):
            MODELS.build(dict(TINY, directions=bad))
    # any order of names is the canonical one
    model = MODELS.build(dict(TINY, directions=('deformable', 'forward')))
    assert model.layers[0].blocks[0].op.directions == ('forward', 'deformable')


def test_fixed_orders():
    """Continuous: every step moves to a neighbouring pixel, rows alternate. Local: the windows
    are scanned one after the other, raster inside, partial ones at the edges."""
    continuous = fixed_scan_order('continuous', 3, 4, 7, 'cpu')
    assert continuous.tolist() == [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11]
    local = fixed_scan_order('local', 3, 5, 2, 'cpu')
    assert local.tolist() == [0, 1, 5, 6, 2, 3, 7, 8, 4, 9, 10, 11, 12, 13, 14]
    assert torch.equal(fixed_scan_order('local', 4, 4, 4, 'cpu'), torch.arange(16))


@pytest.mark.parametrize('direction', ['continuous', 'local'])
def test_a_fixed_third_direction_scans_the_map_in_its_order(direction):
    model = MODELS.build(dict(TINY, directions=('forward', 'backward', direction),
                              local_window=3))
    op = model.layers[0].blocks[0].op
    x = torch.randn(2, 16, 5, 7)
    xs, order = op.sequences(x)
    expected = fixed_scan_order(direction, 5, 7, 3, 'cpu')
    assert torch.equal(order, expected.expand(2, -1))
    raster = x.flatten(2)
    assert torch.equal(xs, torch.stack((raster, raster.flip(-1), raster[:, :, expected]), 1))


@pytest.mark.parametrize('switches, offset_channels, table, attention', [
    (dict(), 3, True, True),
    (dict(deformable_points=False), 1, True, True),
    (dict(deformable_tokens=False), 2, True, True),
    (dict(deformable_points=False, deformable_tokens=False), 0, True, True),
    (dict(offset_bias=False), 3, False, True),
    (dict(channel_attention=False), 3, True, False),
])
def test_defmamba_deformable_scan_switches(switches, offset_channels, table, attention):
    """No deformable points: no point offsets, every token read at its reference point. No
    deformable tokens: no order offset, raster order. Neither: no offset network. No offset
    bias: no bias table. No channel attention: no ``ca``."""
    model = MODELS.build(dict(TINY, **switches))
    scan = model.layers[0].blocks[0].op.DS
    if offset_channels:
        assert scan.conv_offset.conv2.weight.shape[0] == offset_channels
        assert bool(keys(model, 'conv_offset.ca.')) == attention
    else:
        assert not keys(model, 'conv_offset')
    assert bool(keys(model, 'rpe_table')) == table
    x = torch.randn(2, 16, 6, 10)
    pos, order_keys = scan.points_and_keys(x)
    reference, _ = _zero_offsets(DeformableScan(16)).points_and_keys(x)
    if not switches.get('deformable_points', True):
        torch.testing.assert_close(pos, reference)
    else:
        assert not torch.allclose(pos, reference)
    order = torch.argsort(order_keys, stable=True)
    assert torch.equal(order[0], torch.arange(60)) != switches.get('deformable_tokens', True)
    forward_backward(model)


def _zero_offsets(scan):
    scan.conv_offset.conv2.weight.data.zero_()
    return scan


def test_defmamba_offset_kernel_sizes():
    model = MODELS.build(dict(TINY, offset_kernel_sizes=(3, 5, 7, 9)))
    assert [layer.blocks[0].op.DS.conv_offset.conv1.kernel_size for layer in model.layers] == [
        (3, 3), (5, 5), (7, 7), (9, 9)]
    assert [layer.blocks[0].op.DS.conv_offset.conv1.kernel_size
            for layer in MODELS.build(TINY).layers] == [(9, 9), (7, 7), (5, 5), (3, 3)]
    with pytest.raises(ValueError, match='offset_kernel_sizes'):
        MODELS.build(dict(TINY, offset_kernel_sizes=(9, 7)))


SPATIAL = dict(type='SpatialMamba', dims=8, depths=[1, 1, 1, 1])


@pytest.mark.parametrize('dilations, kernels', [
    ((1, 3, 5), ['kernel_3', 'kernel_3_1', 'kernel_3_2']),
    ((2, ), ['kernel_3']),
    ((1, 2, 4, 8), ['kernel_3', 'kernel_3_1', 'kernel_3_2', 'kernel_3_3']),
    (None, []),
])
def test_spatialmamba_fusion_dilations(dilations, kernels):
    """One 3x3 kernel and one weight per dilation; none: no state fusion (plain Mamba's read-out).
    Training (dilated convolutions) and evaluation (the merged kernel) compute the same."""
    model = MODELS.build(dict(SPATIAL, fusion_dilations=dilations))
    fusion = keys(model, 'layers.0.blocks.0.self_attention.state_fusion.')
    assert [k.split('.')[-1] for k in fusion] == sorted(kernels + ['alpha'] * bool(kernels))
    if kernels:
        assert model.layers[0].blocks[0].self_attention.state_fusion.alpha.shape == (
            len(kernels), )
    forward_backward(model)
    if dilations:
        fusion = StateFusion(4, dilations)
        torch.nn.init.normal_(fusion.alpha)
        h = torch.randn(2, 4, 9, 11)
        torch.testing.assert_close(fusion.train()(h), fusion.eval()(h))


DAMAMBA = dict(type='DAMamba', dims=[16, 32, 32, 32], depths=[1, 1, 1, 1], head_dim=8,
               norm_cfg=dict(type='BN'))


def test_damamba_without_adaptive_scan_is_the_raster_scan():
    """No offset networks; the output equals the adaptive model's with zero offsets (every point
    at its pixel: raster sampling)."""
    torch.manual_seed(0)
    raster = MODELS.build(dict(DAMAMBA, adaptive_scan=False)).eval()
    assert not keys(raster, 'da_scan')
    adaptive = MODELS.build(DAMAMBA).eval()
    missing = adaptive.load_state_dict(raster.state_dict(), strict=False).missing_keys
    assert missing and all('.da_scan.' in k for k in missing)
    for name, param in adaptive.named_parameters():
        if name.endswith(('da_scan.offset.weight', 'da_scan.offset.bias')):
            param.data.zero_()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(raster(image), adaptive(image)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    forward_backward(raster.train())
