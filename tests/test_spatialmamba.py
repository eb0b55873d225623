"""Spatial-Mamba equals the official MM_SpatialMamba: keys of every variant, outputs and input
gradients on the reference files (see the fixture README for the procedure and tolerances); its
state fusion never uses a stale fused kernel; the options every backbone shares are in
test_backbone_contract.py."""
import json

import pytest
import torch
import torch.nn.functional as F

from _refs import fixture_dir, load_ref, max_rel_err, reference_files, run_case
from mmdefscan.models.backbones import SpatialMamba
from mmdefscan.ops import SelectiveScanStates, StateFusion, selective_scan_states
from mmdefscan.registry import MODELS

REFS = reference_files('spatialmamba')


@pytest.mark.parametrize('path', REFS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_matches_official_outputs_and_gradients(path, dtype):
    ref = load_ref(path)
    if dtype == torch.float32:  # fixture README: float32 tolerances with per-file floors
        tol_out = max(1e-4, 10 * ref['official_fp32_rel_err']['out'])
        tol_grad = max(1e-3, 10 * ref['official_fp32_rel_err']['grad'])
    else:
        tol_out = tol_grad = 1e-6
    model = SpatialMamba(out_indices=ref['out_indices'], **ref['config_kwargs']).to(dtype)
    errors = {}
    for name in ref['inputs']:
        out_eval, out_train, grad = run_case(model, ref, name, dtype)
        errors[name] = dict(
            eval=[max_rel_err(o, r) for o, r in zip(out_eval, ref[f'out_eval_{name}'])],
            train=[max_rel_err(o, r) for o, r in zip(out_train, ref[f'out_train_{name}'])],
            grad=max_rel_err(grad, ref[f'grad_input_{name}']))
        assert len(out_eval) == len(ref[f'out_eval_{name}'])
        for o, r in zip(out_eval, ref[f'out_eval_{name}']):
            assert o.shape == r.shape and o.dtype == dtype
    print(f'\n{path.split("/")[-1]} {dtype}: ' + json.dumps(errors))
    for name, err in errors.items():
        assert max(err['eval']) <= tol_out, (name, err)
        assert max(err['train']) <= tol_out, (name, err)
        assert err['grad'] <= tol_grad, (name, err)


def official_keys():
    return json.loads((fixture_dir() / 'spatialmamba_keys_all_variants.json').read_text())


@pytest.mark.parametrize('variant', ['tiny', 'small', 'base'])
def test_state_dict_equals_official_layout(variant):
    spec = official_keys()['variants'][variant]
    official = spec['backbone']
    model = SpatialMamba(arch=variant)
    ours = [[k, list(v.shape), str(v.dtype).replace('torch.', '')]
            for k, v in model.state_dict().items()]
    assert ours == [[k, list(s), d] for k, s, d in official['keys']]
    assert sum(p.numel() for p in model.parameters()) == official['num_parameters']
    # the official keyword dict gives the same network as arch=
    from_official = SpatialMamba(**official['config_kwargs'])
    assert [(k, v.shape) for k, v in from_official.state_dict().items()] == \
        [(k, v.shape) for k, v in model.state_dict().items()]
    # an official classification checkpoint differs only by what the backbone drops / adds
    assert all(k.startswith(SpatialMamba.head_prefixes) for k in spec['only_in_classifier'])
    assert all(k.startswith(SpatialMamba.optional_prefixes) for k in spec['only_in_backbone'])


def tiny_model(**kwargs):
    return SpatialMamba(dims=8, depths=[1, 2, 1, 1], **kwargs)


def test_official_classification_checkpoint_loads(tmp_path):
    """'model' entry with norm.* and head.*, no output norms (official ImageNet checkpoints)."""
    source = tiny_model()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith('outnorm')}
    state.update({'norm.weight': torch.ones(64), 'norm.bias': torch.zeros(64),
                  'head.weight': torch.zeros(1000, 64), 'head.bias': torch.zeros(1000)})
    torch.save({'model': state, 'model_ema': state, 'epoch': 299}, tmp_path / 'cls.pth')
    model = tiny_model(init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'cls.pth')))
    model.init_weights()
    for k, v in state.items():
        if not k.startswith(('norm.', 'head.')):
            assert torch.equal(model.state_dict()[k], v), k
    assert torch.equal(model.outnorm0.weight, torch.ones(8))
    # the official keyword pretrained= means the same (an empty string, as in the official
    # det/seg configs, means none)
    model = tiny_model(pretrained=str(tmp_path / 'cls.pth'))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=str(tmp_path / 'cls.pth'))
    model.init_weights()
    assert torch.equal(model.layers[0].blocks[0].self_attention.in_proj.weight,
                       state['layers.0.blocks.0.self_attention.in_proj.weight'])
    assert tiny_model(pretrained='').init_cfg is None


# ---------------------------------------------------------------------------- state fusion

def clamped_fusion(h, fusion):
    """Independent reference: out[p] = sum_i,a,b alpha_i k_i[a, b] h[clamp(p + r_i (a-1, b-1))]."""
    _, _, height, width = h.shape
    out = torch.zeros_like(h)
    rows, cols = torch.arange(height), torch.arange(width)
    for alpha, kernel, r in zip(fusion.alpha, fusion.kernels(), (1, 3, 5)):
        for a in range(3):
            for b in range(3):
                src = h[:, :, (rows + r * (a - 1)).clamp(0, height - 1)][
                    :, :, :, (cols + r * (b - 1)).clamp(0, width - 1)]
                out = out + alpha * kernel[None, :, 0, a, b, None, None] * src
    return out


def perturbed_fusion(dim, dtype=torch.float64):
    fusion = StateFusion(dim).to(dtype)
    with torch.no_grad():
        for p in fusion.kernels():
            p.copy_(torch.randn_like(p))
        fusion.alpha.copy_(torch.randn(3, dtype=dtype))
    return fusion


@pytest.mark.parametrize('size', [(7, 7), (9, 13), (1, 1), (2, 9), (14, 6)])
def test_state_fusion_train_and_eval_are_replicate_padded_dilated_convs(size):
    fusion = perturbed_fusion(4)
    h = torch.randn(2, 4, *size, dtype=torch.float64)
    expected = clamped_fusion(h, fusion)
    out_train = fusion.train()(h)
    out_eval = fusion.eval()(h)
    torch.testing.assert_close(out_train, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_eval, expected, rtol=1e-12, atol=1e-12)
    # the fused kernel holds the three dilated kernels around one shared centre
    merged = fusion.merged_kernel()
    a = fusion.alpha
    torch.testing.assert_close(merged[:, :, 4:7, 4:7][:, :, [0, 2]][:, :, :, [0, 2]],
                               (a[0] * fusion.kernel_3)[:, :, [0, 2]][:, :, :, [0, 2]])
    torch.testing.assert_close(merged[:, :, 5, 5], a[0] * fusion.kernel_3[:, :, 1, 1]
                               + a[1] * fusion.kernel_3_1[:, :, 1, 1]
                               + a[2] * fusion.kernel_3_2[:, :, 1, 1])
    assert (merged != 0).sum() == 4 * (3 * 9 - 2)


def test_state_fusion_eval_path_backpropagates_like_train_path():
    fusion = perturbed_fusion(3)
    h = torch.randn(1, 3, 6, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 3, 6, 8, dtype=torch.float64)
    grads = []
    for mode in (True, False):
        fusion.train(mode)
        grads.append(torch.autograd.grad((fusion(h) * w).sum(), [h, *fusion.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_state_fusion_eval_follows_optimizer_steps_and_load_state_dict():
    """The official eval caches its fused kernel forever; here eval always uses the weights."""
    fusion = perturbed_fusion(3, torch.float32)
    h = torch.randn(2, 3, 9, 11)
    fusion.eval()
    first = fusion(h)
    opt = torch.optim.SGD(fusion.parameters(), lr=0.1)
    fusion.train()
    (fusion(h) ** 2).mean().backward()
    opt.step()
    fusion.eval()
    second = fusion(h)
    assert max_rel_err(second, first) > 1e-2
    torch.testing.assert_close(second, fusion.train()(h), rtol=1e-5, atol=1e-5)
    other = perturbed_fusion(3, torch.float32)
    fusion.eval().load_state_dict(other.state_dict())
    torch.testing.assert_close(fusion(h), other.eval()(h))


# ---------------------------------------------------------------------------- state scan

def sequential_states(u, delta, A, B, delta_bias):
    """h_t = exp(dt A) h_{t-1} + dt B_t u_t, step by step, dt = softplus(delta + bias)."""
    dt = F.softplus(delta + delta_bias[:, None])
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    states = []
    for t in range(u.shape[-1]):
        h = torch.exp(dt[..., t, None] * A) * h + (dt[..., t] * u[..., t])[..., None] \
            * B[:, None, :, t]
        states.append(h)
    return torch.stack(states, -1)


@pytest.mark.parametrize('n_state', [1, 3])
def test_state_scan_returns_the_hidden_states(n_state):
    g = torch.Generator().manual_seed(0)
    batch, dim, length = 2, 5, 37
    u = torch.randn(batch, dim, length, generator=g, dtype=torch.float64, requires_grad=True)
    delta = torch.randn(batch, dim, length, generator=g, dtype=torch.float64, requires_grad=True)
    A = (-torch.rand(dim, n_state, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    B = torch.randn(batch, n_state, length, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(dim, generator=g, dtype=torch.float64, requires_grad=True)
    inputs = (u, delta, A, B, bias)
    h = selective_scan_states(*inputs)
    expected = sequential_states(*inputs)
    assert h.shape == (batch, dim, n_state, length) and h.dtype == torch.float64
    torch.testing.assert_close(h, expected, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(h)
    for a, b in zip(torch.autograd.grad((h * w).sum(), inputs),
                    torch.autograd.grad((expected * w).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(SelectiveScanStates()(*inputs), h)


def test_state_scan_output_is_float32_for_half_inputs():
    """The official rh kernel always returns float32 (also under autocast)."""
    u = torch.randn(1, 4, 10).half()
    h = selective_scan_states(u, u, -torch.ones(4, 1), torch.randn(1, 1, 10).half(),
                              torch.zeros(4))
    assert h.dtype == torch.float32


def test_ops_are_registered():
    assert isinstance(MODELS.build(dict(type='StateFusion', dim=4)), StateFusion)
    assert isinstance(MODELS.build(dict(type='SelectiveScanStates')), SelectiveScanStates)


# ---------------------------------------------------------------------------- backbone

def strengthen(model):
    """Unit-variance Linear layers (as in the fixtures' perturbation), so that the state fusion
    visibly matters: at the official init (std 0.02) the SSM branch is almost invisible."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(1 / (0.02 * m.in_features ** 0.5))
    return model


def test_eval_after_training_uses_the_new_weights():
    """train step -> eval -> train step -> eval: the second eval equals a fresh model loaded with
    the new weights (the official model would still use the fused kernels of the first eval)."""
    model = strengthen(tiny_model(drop_path_rate=0.0).double())
    opt = torch.optim.Adam(model.parameters(), lr=0.05)  # moves every parameter, fusion included
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    evals, fusions = [], []
    for _ in range(2):
        model.train()
        opt.zero_grad()
        sum(o.square().mean() for o in model(x)).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            evals.append(model(x))
        fusions.append({k: v.clone() for k, v in model.state_dict().items() if 'state_fusion' in k})
    fresh = tiny_model().double()
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        expected = fresh(x)
        for o, e in zip(evals[1], expected):
            torch.testing.assert_close(o, e, rtol=1e-12, atol=1e-12)
        # what a stale cache would give: the new weights with the first eval's fusion kernels
        fresh.load_state_dict(fusions[0], strict=False)
        stale = fresh(x)
    print('\nstale-kernel effect after one step:',
          max(max_rel_err(a, b) for a, b in zip(evals[1], stale)))
    assert max(max_rel_err(a, b) for a, b in zip(evals[1], stale)) > 1e-3
    # load_state_dict into a model that has already evaluated refreshes its eval kernels
    other = strengthen(tiny_model().double().eval())
    with torch.no_grad():
        for name, p in other.named_parameters():
            if 'state_fusion' in name:
                p.mul_(1 + 0.3 * torch.randn_like(p))
        model.load_state_dict(other.state_dict())
        for o, e in zip(model(x), other(x)):
            torch.testing.assert_close(o, e, rtol=1e-12, atol=1e-12)
        model.load_state_dict({**other.state_dict(), **fusions[0]})
        assert max(max_rel_err(a, b) for a, b in zip(model(x), other(x))) > 1e-3


def test_eval_mode_backpropagates():
    model = tiny_model().eval()
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    sum(o.sum() for o in model(x)).backward()
    fusion = model.layers[1].blocks[0].self_attention.state_fusion
    assert torch.isfinite(x.grad).all() and fusion.alpha.grad.abs().sum() > 0


def test_official_keyword_dicts_build():
    """The official det / seg configs merge Swin's keys into the backbone dict."""
    det = dict(out_indices=(0, 1, 2, 3), pretrained='', dims=64, d_state=1, depths=(2, 4, 8, 4),
               drop_path_rate=0.2, embed_dims=96, num_heads=[3, 6, 12, 24], window_size=7,
               mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
               patch_norm=True, with_cp=False, convert_weights=True)
    seg = dict(pretrain_img_size=224, embed_dims=96, patch_size=4, window_size=7, mlp_ratio=4,
               depths=(2, 4, 8, 4), num_heads=[3, 6, 12, 24], strides=(4, 2, 2, 2),
               out_indices=(0, 1, 2, 3), qkv_bias=True, qk_scale=None, patch_norm=True,
               drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.2, use_abs_pos_embed=False,
               act_cfg=dict(type='GELU'), norm_cfg=dict(type='LN', requires_grad=True),
               pretrained='', dims=64, d_state=1)
    reference = SpatialMamba(arch='tiny')
    for cfg in (det, seg):
        model = SpatialMamba(**cfg)
        assert model.dims == [64, 128, 256, 512] and model.init_cfg is None
        assert [(k, v.shape) for k, v in model.state_dict().items()] == \
            [(k, v.shape) for k, v in reference.state_dict().items()]
    classification = dict(in_chans=3, patch_size=4, num_classes=1000, depths=[1, 1, 1, 1],
                          dims=8, d_state=1, dt_init='random', mlp_ratio=4.0, drop_rate=0.0,
                          drop_path_rate=0.1, use_checkpoint=True, norm_layer='ln', key='model')
    assert SpatialMamba(**classification).with_cp
    with pytest.raises(TypeError, match='ssm_d_state'):
        SpatialMamba(ssm_d_state=1)
    with pytest.raises(ValueError, match='d_state'):
        SpatialMamba(d_state=4)
    with pytest.raises(ValueError, match='norm_layer'):
        SpatialMamba(norm_layer='bn')
    with pytest.raises(ValueError, match='dt_init'):
        SpatialMamba(dt_init='uniform')


def test_attn_drop_rate_adds_dropout_after_out_proj():
    model = SpatialMamba(dims=8, depths=[1, 1, 1, 1], attn_drop_rate=0.5)
    assert model.layers[0].blocks[0].self_attention.dropout.p == 0.5
    assert tiny_model().layers[0].blocks[0].self_attention.dropout is None
