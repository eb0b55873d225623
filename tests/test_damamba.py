"""DAMamba equals the official downstream DAMamba: keys of every variant, outputs and input
gradients on the reference files (see the fixture README for the procedure and tolerances); its
sampling follows the official DCNv3 rules point by point; the options every backbone shares are in
test_backbone_contract.py."""
import json
import math

import pytest
import torch
import torch.distributed as dist

from _refs import fixture_dir, load_ref, max_rel_err, reference_files, run_case
from mmdefscan.models.backbones import DAMamba
from mmdefscan.ops import (DynamicAdaptiveScan, OffsetPredictionNet, adaptive_sample,
                           selective_scan_states)
from mmdefscan.registry import MODELS

REFS = reference_files('damamba')
SMALL = dict(depths=[1, 2, 1, 1], dims=[16, 32, 48, 64], mlp_ratios=[4, 4, 3, 3], head_dim=16)


def fixture_errors(model, ref, dtype):
    errors = {}
    for name in ref['inputs']:
        out_eval, out_train, grad = run_case(model, ref, name, dtype)
        assert len(out_eval) == len(out_train) == len(ref[f'out_eval_{name}'])
        for o, r in zip(out_eval, ref[f'out_eval_{name}']):
            assert o.shape == r.shape and o.dtype == dtype
        errors[name] = dict(
            eval=[max_rel_err(o, r) for o, r in zip(out_eval, ref[f'out_eval_{name}'])],
            train=[max_rel_err(o, r) for o, r in zip(out_train, ref[f'out_train_{name}'])],
            grad=max_rel_err(grad, ref[f'grad_input_{name}']))
    return errors


@pytest.mark.parametrize('path', REFS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_matches_official_outputs_and_gradients(path, dtype):
    ref = load_ref(path)
    if dtype == torch.float32:  # fixture README: float32 tolerances with per-file floors
        tol_out = max(1e-4, 10 * ref['official_fp32_rel_err']['out'])
        tol_grad = max(1e-3, 10 * ref['official_fp32_rel_err']['grad'])
    else:
        tol_out = tol_grad = 1e-6
    # the official call is DAMamba(**config_kwargs) and always returns the four stages
    model = DAMamba(out_indices=ref['out_indices'], **ref['config_kwargs']).to(dtype)
    errors = fixture_errors(model, ref, dtype)
    print(f'\n{path.split("/")[-1]} {dtype}: ' + json.dumps(
        {n: {k: ([f'{e:.1e}' for e in v] if isinstance(v, list) else f'{v:.1e}')
             for k, v in err.items()} for n, err in errors.items()}))
    for name, err in errors.items():
        assert max(err['eval']) <= tol_out, (name, err)
        assert max(err['train']) <= tol_out, (name, err)
        assert err['grad'] <= tol_grad, (name, err)


def test_reference_rejects_offsets_read_as_y_then_x():
    """Test power: the reference outputs see the (dx, dy) order of the offsets."""
    ref = load_ref(REFS[0])
    state = dict(ref['state_dict'])
    for key in [k for k in state if k.endswith(('da_scan.offset.weight', 'da_scan.offset.bias'))]:
        v = state[key]
        state[key] = v.unflatten(0, (-1, 2)).flip(1).flatten(0, 1)
    model = DAMamba(**ref['config_kwargs']).double().eval()
    model.load_state_dict(state)
    name = ref['inputs'][0]
    with torch.no_grad():
        outs = model(ref[f'input_{name}'].double())
    assert max(max_rel_err(o, r) for o, r in zip(outs, ref[f'out_eval_{name}'])) > 0.05


def official_keys():
    return json.loads((fixture_dir() / 'damamba_keys_all_variants.json').read_text())


@pytest.mark.parametrize('variant', ['tiny', 'small', 'base'])
def test_state_dict_equals_official_layout(variant):
    spec = official_keys()['variants'][variant]
    official = spec['backbone']
    model = DAMamba(arch=variant)
    ours = [[k, list(v.shape), str(v.dtype).replace('torch.', '')]
            for k, v in model.state_dict().items()]
    assert ours == [[k, list(s), d] for k, s, d in official['keys']]
    # all parameters, including the frozen conv_constant of every ResDWC
    assert sum(p.numel() for p in model.parameters()) == official['num_parameters']
    constants = [p for n, p in model.named_parameters() if n.endswith('conv_constant')]
    assert len(constants) == 2 * sum(model.depths) and not any(p.requires_grad for p in constants)
    # the official keyword dict gives the same network as arch=
    from_official = DAMamba(**official['config_kwargs'])
    assert [(k, v.shape) for k, v in from_official.state_dict().items()] == \
        [(k, v.shape) for k, v in model.state_dict().items()]
    # an official ImageNet checkpoint is the backbone plus head.* (dropped by head_prefixes)
    assert spec['only_in_backbone'] == [] and all(
        k.startswith(DAMamba.head_prefixes) for k in spec['only_in_classifier'])


def test_layer_scale_model_builds_with_official_keys():
    model = DAMamba(**SMALL, layerscale=[False, True, True, False])
    keys = list(model.state_dict())
    scaled = [k for k in keys if 'layer_scale' in k]
    assert scaled == ['stages.1.blocks.0.layer_scale_1', 'stages.1.blocks.0.layer_scale_2',
                      'stages.1.blocks.1.layer_scale_1', 'stages.1.blocks.1.layer_scale_2',
                      'stages.2.blocks.0.layer_scale_1', 'stages.2.blocks.0.layer_scale_2']
    # they open their block's keys (own parameters come first, as in the official Block)
    first = keys.index('stages.1.blocks.0.layer_scale_1')
    assert keys[first + 2] == 'stages.1.blocks.0.token_mixer.x_proj_weight'
    assert torch.equal(model.stages[1].blocks[0].layer_scale_1, torch.full((32,), 1e-6))
    assert model.stages[0].blocks[0].layer_scale_1 is None


def test_layer_scale_multiplies_each_branch_per_channel():
    """Layer scales of 1 give the plain block; scales s give x + s1*mixer, x + s2*mlp."""
    plain = DAMamba(**SMALL).double().eval()
    scaled = DAMamba(**SMALL, layerscale=True).double().eval()
    state = plain.state_dict()
    ones = {k: torch.ones_like(v) for k, v in scaled.state_dict().items() if 'layer_scale' in k}
    scaled.load_state_dict({**state, **ones})
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(plain(x), scaled(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        block = scaled.stages[1].blocks[0]
        s1, s2 = torch.rand(32, dtype=torch.float64), torch.rand(32, dtype=torch.float64)
        block.layer_scale_1.copy_(s1)
        block.layer_scale_2.copy_(s2)
        z = torch.randn(2, 32, 8, 8, dtype=torch.float64)
        p = block.pos_embed(z)
        p = p + s1[:, None, None] * block.token_mixer(block.norm1(p))
        expected = p + s2[:, None, None] * block.mlp(block.norm2(p))
        torch.testing.assert_close(block(z), expected, rtol=0, atol=1e-12)


def dcnv3_point_reference(values, offsets, groups):
    """The official DCNv3 im2col for a 1x1 kernel written out one output point at a time
    (offset scale 1, mask 1): loc = (i + dy, j + dx); the point counts only if -1 < loc_h < H and
    -1 < loc_w < W; bilinear over the 4 neighbours, a neighbour outside the map reads 0."""
    batch, channels, height, width = values.shape
    gc = channels // groups
    out = []
    for b in range(batch):
        rows = []
        for i in range(height):
            cols = []
            for j in range(width):
                per_group = []
                for g in range(groups):
                    loc_w = j + offsets[b, i, j, 2 * g]
                    loc_h = i + offsets[b, i, j, 2 * g + 1]
                    acc = values.new_zeros(gc)
                    if -1 < loc_h < height and -1 < loc_w < width:
                        h_low, w_low = math.floor(loc_h.item()), math.floor(loc_w.item())
                        lh, lw = loc_h - h_low, loc_w - w_low
                        for hh, ww, weight in ((h_low, w_low, (1 - lh) * (1 - lw)),
                                               (h_low, w_low + 1, (1 - lh) * lw),
                                               (h_low + 1, w_low, lh * (1 - lw)),
                                               (h_low + 1, w_low + 1, lh * lw)):
                            if 0 <= hh <= height - 1 and 0 <= ww <= width - 1:
                                acc = acc + weight * values[b, g * gc:(g + 1) * gc, hh, ww]
                    per_group.append(acc)
                cols.append(torch.cat(per_group))
            rows.append(torch.stack(cols, -1))
        out.append(torch.stack(rows, -2))
    return torch.stack(out)


def border_offsets(batch, height, width, groups, generator):
    """Offsets that put points everywhere near and beyond the borders: inside, in the one-pixel
    bands (-1, 0) and (H-1, H) where only some corners exist, beyond them, and on integers."""
    off = (torch.rand(batch, height, width, groups, 2, generator=generator,
                      dtype=torch.float64) - 0.5) * 2 * torch.tensor([width, height]) * 0.9
    i1, j1 = min(1, height - 1), min(1, width - 1)
    off[0, 0, 0, 0] = torch.tensor([-0.5, -0.25])        # both coordinates in (-1, 0)
    off[0, -1, -1, 0] = torch.tensor([0.6, 0.3])         # in (W-1, W) and (H-1, H)
    off[0, 0, j1, -1] = torch.tensor([-1.5 - j1, -1.0])  # x < -1, y == -1: outside
    off[0, i1, 0, -1] = torch.tensor([0.0, -i1])         # an integer point inside
    off[0, i1, j1, 0] = torch.tensor([width + 0.0, 0.5])  # beyond the right border
    off[-1, -1, 0, -1] = torch.tensor([-0.999, 0.999])   # x in (-1, 0), y in (H-1, H)
    return off.flatten(-2)


@pytest.mark.parametrize('size', [(5, 7), (1, 6), (4, 1), (1, 1)])
def test_sampling_follows_official_dcnv3_near_borders(size):
    g = torch.Generator().manual_seed(3)
    groups, gc = 2, 3
    values = torch.randn(2, groups * gc, *size, generator=g, dtype=torch.float64)
    offsets = border_offsets(2, *size, groups, g)
    values.requires_grad_(True)
    offsets.requires_grad_(True)
    ours = adaptive_sample(values, offsets, groups)
    official = dcnv3_point_reference(values, offsets.detach(), groups)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-13)
    # the derivative is the exact one, as DCNv3's backward (points off the integer lattice)
    official_with_grad = dcnv3_point_reference(values, offsets, groups)
    w = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * w).sum(), (values, offsets))
    expected = torch.autograd.grad((official_with_grad * w).sum(), (values, offsets))
    smooth = (offsets.detach() - offsets.detach().round()).abs() > 1e-9
    torch.testing.assert_close(grads[0], expected[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[1][smooth], expected[1][smooth], rtol=0, atol=1e-12)
    # zero offsets read every pixel itself (up to the rounding of grid_sample's normalisation)
    unmoved = adaptive_sample(values.detach(), torch.zeros_like(offsets), groups)
    torch.testing.assert_close(unmoved, values.detach(), rtol=0, atol=1e-14)


def test_sampling_at_integer_offsets_is_a_shift_with_zero_fill():
    values = torch.arange(2 * 4 * 5, dtype=torch.float64).view(1, 2, 4, 5)
    offsets = torch.zeros(1, 4, 5, 4, dtype=torch.float64)
    offsets[..., 0] = 1.0   # group 0: one pixel right (x)
    offsets[..., 3] = -1.0  # group 1: one pixel up (y)
    out = adaptive_sample(values, offsets, 2)
    torch.testing.assert_close(out[0, 0, :, :-1], values[0, 0, :, 1:])
    assert (out[0, 0, :, -1] == 0).all()
    torch.testing.assert_close(out[0, 1, 1:], values[0, 1, :-1])
    assert (out[0, 1, 0] == 0).all()


@pytest.mark.parametrize('dtype, ulp', [(torch.bfloat16, 2 ** -7), (torch.float16, 2 ** -10)])
def test_sampling_in_low_precision_uses_exact_coordinates(dtype, ulp):
    """Wide maps: coordinates in bfloat16 would be off by pixels; the result is the float64
    sampling of the same inputs up to the rounding of the output (and float32 coordinates:
    about 1e-4 at 300 pixels, as in the kernel's float32 arithmetic)."""
    g = torch.Generator().manual_seed(0)
    values = torch.randn(1, 32, 40, 300, generator=g).to(dtype)
    offsets = (torch.randn(1, 40, 300, 4, generator=g) * 3).to(dtype)
    out = adaptive_sample(values, offsets, 2)
    assert out.dtype == dtype
    exact = adaptive_sample(values.double(), offsets.double(), 2)
    assert ((out.double() - exact).abs() <= ulp * exact.abs() + 2e-4).all()


def test_state_scan_returns_the_hidden_states_in_float32():
    g = torch.Generator().manual_seed(0)
    batch, dim, length = 2, 5, 23
    u = torch.randn(batch, dim, length, generator=g, dtype=torch.float64)
    delta = torch.randn(batch, dim, length, generator=g, dtype=torch.float64)
    A = -torch.rand(dim, 1, generator=g, dtype=torch.float64) * 2
    B = torch.randn(batch, 1, length, generator=g, dtype=torch.float64)
    bias = torch.randn(dim, generator=g, dtype=torch.float64)
    h = selective_scan_states(u, delta, A, B, bias)[:, :, 0]
    dt = torch.nn.functional.softplus(delta + bias[:, None])
    state, expected = torch.zeros(batch, dim, dtype=torch.float64), []
    for t in range(length):
        state = torch.exp(dt[..., t] * A[:, 0]) * state + dt[..., t] * B[:, 0, t, None] * u[..., t]
        expected.append(state)
    torch.testing.assert_close(h, torch.stack(expected, -1), rtol=0, atol=1e-12)
    low = selective_scan_states(u.bfloat16(), delta.bfloat16(), A.float(), B.bfloat16(), bias.float())
    assert low.dtype == torch.float32


def test_scan_modules_are_registered_and_standalone():
    net = MODELS.build(dict(type='OffsetPredictionNet', channels=32, groups=2))
    scan = MODELS.build(dict(type='mmdefscan.DynamicAdaptiveScan', channels=32, groups=2))
    assert isinstance(net, OffsetPredictionNet) and isinstance(scan, DynamicAdaptiveScan)
    assert [k for k in scan.state_dict()] == [
        'dw_conv.0.weight', 'dw_conv.0.bias', 'dw_conv.1.1.weight', 'dw_conv.1.1.bias',
        'offset.weight', 'offset.bias']
    z, v = torch.randn(2, 32, 6, 9), torch.randn(2, 32, 6, 9)
    assert net(z).shape == (2, 6, 9, 4)
    torch.testing.assert_close(scan(z, v), v)  # zero-initialised offsets read every pixel itself
    with torch.no_grad():
        scan.offset.bias.copy_(torch.tensor([0.3, -0.2, 1.5, 0.25]))
    torch.testing.assert_close(scan(z, v), adaptive_sample(v, scan.predict_offsets(z), 2))
    with pytest.raises(ValueError, match='divisible'):
        OffsetPredictionNet(30, 4)


def test_builds_from_the_registries():
    from mmengine.registry import MODELS as ROOT
    model = ROOT.build(dict(type='mmdefscan.DAMamba', **SMALL, out_indices=(2, 3)))
    assert isinstance(model, DAMamba) and model.out_indices == (2, 3)
    assert isinstance(MODELS.build(dict(type='DAMamba', **SMALL)), DAMamba)


def test_official_keywords_and_arch():
    # what the official downstream configs give the registered classes
    model = DAMamba(arch='tiny', pretrain_size=224, img_size=800)
    assert model.dims == [80, 160, 320, 512] and model.depths == [3, 4, 12, 5]
    # an official keyword dict without arch is completed with the official class defaults
    model = DAMamba(depths=[1, 1, 1, 1], dims=[48, 96, 144, 192])
    assert model.stages[0].blocks[0].token_mixer.da_scan.groups == 2  # head_dim 24
    assert model.stages[0].blocks[0].mlp.fc1.out_channels == 4 * 48
    with pytest.raises(TypeError, match='ssm_d_state'):
        DAMamba(ssm_d_state=1)
    with pytest.raises(ValueError, match='act_layer'):
        DAMamba(**SMALL, act_layer='ReLU')
    with pytest.raises(ValueError, match='groups'):
        DAMamba(**dict(SMALL, head_dim=24))  # 16 channels // 24 = 0 groups
    with pytest.raises(ValueError, match='out_indices'):
        DAMamba(**SMALL, out_indices=(4,))


def test_official_pretrained_keyword_loads_an_imagenet_checkpoint(tmp_path):
    source = DAMamba(**SMALL)
    state = dict(source.state_dict())
    state['head.fc.weight'] = torch.zeros(1000, 64)
    state['head.fc.bias'] = torch.zeros(1000)
    torch.save({'model': state, 'epoch': 299}, tmp_path / 'cls.pth')
    model = DAMamba(**SMALL, pretrained=str(tmp_path / 'cls.pth'))
    model.init_weights()
    for k, v in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_trains_on_cpu_without_a_process_group_with_official_syncbn():
    assert not (dist.is_available() and dist.is_initialized())
    model = DAMamba(**SMALL, norm_cfg=dict(type='SyncBN', requires_grad=True))
    assert isinstance(model.stages[1].blocks[0].norm2, torch.nn.SyncBatchNorm)
    as_bn = DAMamba(**SMALL, norm_cfg=dict(type='BN'))
    assert [(k, v.shape) for k, v in as_bn.state_dict().items()] == \
        [(k, v.shape) for k, v in model.state_dict().items()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, target = torch.randn(2, 3, 64, 64), torch.randn(2, 64, 2, 2)
    model.train()
    losses = []
    for _ in range(3):
        loss = (model(x)[-1] - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert int(model.stem[1].num_batches_tracked) == 3
    # the frozen identity taps stay what they are
    assert torch.equal(model.stages[0].blocks[0].mlp.conv.conv_constant.view(-1),
                       torch.tensor([0., 0., 0., 0., 1., 0., 0., 0., 0.]))


def test_bfloat16_model_and_autocast_run_on_cpu():
    model = DAMamba(**SMALL, layerscale=[False, False, True, True])
    model.train()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(x)
    sum(o.float().square().mean() for o in outs).backward()
    assert all(torch.isfinite(o).all() for o in outs) and torch.isfinite(x.grad).all()
    model = model.bfloat16().eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16))
    assert all(o.dtype == torch.bfloat16 and torch.isfinite(o).all() for o in outs)
