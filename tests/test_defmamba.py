"""DefMamba equals the official MM_VSSM: keys of every variant, outputs and input gradients on
the reference files (see the fixture README for the procedure and tolerances)."""
import json

import pytest
import torch

from _refs import fixture_dir, load_ref, max_rel_err, reference_files, run_case
from mmdefscan.models.backbones import DefMamba
from mmdefscan.ops import DeformablePathSort
from mmdefscan.ops.deformable_scan import resize_table, rpe_table_backward

REFS = reference_files('defmamba')


def build(ref, dtype):
    model = DefMamba(out_indices=ref['out_indices'], **ref['config_kwargs']).to(dtype)
    return model


@pytest.mark.parametrize('path', REFS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_matches_official_outputs_and_gradients(path, dtype):
    ref = load_ref(path)
    if dtype == torch.float32:  # fixture README: float32 tolerances with per-file floors
        tol_out = max(1e-4, 10 * ref['official_fp32_rel_err']['out'])
        tol_grad = max(1e-3, 10 * ref['official_fp32_rel_err']['grad'])
    else:
        tol_out = tol_grad = 1e-6
    model = build(ref, dtype)
    errors = {}
    for name in ref['inputs']:
        out_eval, out_train, grad = run_case(model, ref, name, dtype)
        errors[name] = dict(
            eval=[max_rel_err(o, r) for o, r in zip(out_eval, ref[f'out_eval_{name}'])],
            train=[max_rel_err(o, r) for o, r in zip(out_train, ref[f'out_train_{name}'])],
            grad=max_rel_err(grad, ref[f'grad_input_{name}']))
        for o, r in zip(out_eval, ref[f'out_eval_{name}']):
            assert o.shape == r.shape and o.dtype == dtype
    print(f'\n{path.split("/")[-1]} {dtype}: ' + json.dumps(errors))
    for name, err in errors.items():
        assert max(err['eval']) <= tol_out, (name, err)
        assert max(err['train']) <= tol_out, (name, err)
        assert err['grad'] <= tol_grad, (name, err)


@pytest.mark.parametrize('variant', ['tiny', 'small', 'base'])
def test_state_dict_equals_official_layout(variant):
    spec = json.loads((fixture_dir() / 'defmamba_keys_all_variants.json').read_text())
    official = spec['variants'][variant]['backbone']
    model = DefMamba(arch=variant)
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == [[k, list(s)] for k, s, _ in official['keys']]
    assert sum(p.numel() for p in model.parameters()) == official['num_parameters']
    # the official keyword dict gives the same network as arch=
    from_official = DefMamba(**official['config_kwargs'])
    assert {k: v.shape for k, v in from_official.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


def test_official_detection_dict_with_swin_keys_builds():
    """The official det config merges Swin's keys into the backbone dict; they are accepted."""
    cfg = dict(dims=96, depths=(2, 2, 6, 2), ssm_d_state=16, ssm_dt_rank='auto', ssm_ratio=1.0,
               mlp_ratio=4.0, downsample_version='v3', patchembed_version='v2',
               out_indices=(0, 1, 2, 3), embed_dims=96, num_heads=[3, 6, 12, 24], window_size=7,
               qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, patch_norm=True,
               with_cp=False, convert_weights=True, drop_path_rate=0.2)
    model = DefMamba(**cfg)
    assert model.dims == [96, 192, 384, 768]
    with pytest.raises(TypeError, match='ssm_dstate'):
        DefMamba(ssm_dstate=16)
    with pytest.raises(ValueError, match='downsample_version'):
        DefMamba(downsample_version='v1')


def test_sort_passes_the_official_mean_gradient():
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    sorted_x, order = DeformablePathSort.apply(x, keys)
    torch.testing.assert_close(order, keys.argsort(-1))
    torch.testing.assert_close(sorted_x, torch.gather(x, 2, order[:, None].expand(-1, 4, -1)))
    g = torch.randn_like(sorted_x)
    gx, gk = torch.autograd.grad(sorted_x, (x, keys), g)
    expected_gx = torch.zeros_like(x)
    for b in range(2):
        expected_gx[b, :, order[b]] = g[b]
    torch.testing.assert_close(gx, expected_gx)
    torch.testing.assert_close(gk, (g - expected_gx).mean(1))


@pytest.mark.parametrize('size', [(6, 7), (9, 9), (1, 5), (3, 1), (56, 40)])
def test_rpe_table_backward_equals_grid_sample_of_the_resized_table(size):
    """The Triton path's table gradient (matrix products on the 7 x 7 table) against autograd
    through F.interpolate + grid_sample, fp64; points reach off the map (zero padding) and
    1-pixel axes have no point gradient."""
    torch.manual_seed(0)
    table = torch.randn(5, 7, 7, dtype=torch.float64, requires_grad=True)
    points = (torch.rand(2, *size, 2, dtype=torch.float64) * 2.6 - 1.3).requires_grad_()
    resized = torch.nn.functional.interpolate(table[None], size=size, mode='bilinear',
                                              align_corners=False).expand(2, -1, -1, -1)
    out = torch.nn.functional.grid_sample(resized, points, mode='bilinear', align_corners=True)
    grad_out = torch.randn_like(out)
    expected = torch.autograd.grad(out, (table, points), grad_out)
    for got, want in zip(rpe_table_backward(grad_out, table.detach(), points.detach()), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('size', [(1, 1), (3, 5), (7, 7), (25, 42)])
def test_rpe_table_resize_is_the_official_interpolation(size):
    """resize_table (products with the resize rows) equals F.interpolate (bilinear, no corners),
    values and table gradient, fp64, enlarging and shrinking; under autocast it stays fp32."""
    table = torch.randn(4, 7, 7, dtype=torch.float64, requires_grad=True)
    want = torch.nn.functional.interpolate(table[None], size=size, mode='bilinear',
                                           align_corners=False)[0]
    got = resize_table(table, *size)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, table, grad)[0],
                               torch.autograd.grad(want, table, grad)[0], rtol=1e-12, atol=1e-12)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert resize_table(table.detach().float(), *size).dtype == torch.float32


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_deformable_scan_half_precision_on_a_detection_size_map(dtype):
    """fp16 / bf16 maps larger than 65504 tokens (a 1344x800 image at stride 4): positions and
    keys are float32, and the tokens come back in the input dtype (not promoted)."""
    from mmdefscan.ops import DeformableScan
    torch.manual_seed(0)
    scan = DeformableScan(4, stage=0)
    with torch.no_grad():
        # no order offsets: the order is the raster order whatever the precision, so the tokens
        # compare one to one (a tiny offset difference reorders tokens 2/L apart)
        scan.conv_offset.conv2.weight[2] = 0
    x = torch.randn(1, 4, 200, 336)
    with torch.no_grad():
        tokens_ref, order_ref = scan(x)
        tokens, order = scan.to(dtype)(x.to(dtype))
    assert tokens.dtype == dtype
    assert torch.equal(order, order_ref) and torch.equal(order[0], torch.arange(200 * 336))
    # sampled at float32 positions: within the input's rounding (a half-precision grid is off by
    # up to half a pixel here)
    err = (tokens.float() - tokens_ref).abs().max().item()
    assert err < (0.02 if dtype == torch.float16 else 0.1), err
