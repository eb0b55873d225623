"""Spatial-Mamba on CUDA (skipped without a GPU): the official references through the CUDA path,
CUDA against CPU, the state scan's kernel against the PyTorch scan, and autocast."""
import pytest
import torch

from _refs import max_rel_err, reference_files
from mmdefscan.models.backbones import SpatialMamba
from mmdefscan.ops import kernel_available, selective_scan_states

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize('path', reference_files('spatialmamba'))
def test_official_references_on_cuda(path):
    """The fixture procedure in float32 on the GPU (scan kernel when mamba-ssm is there)."""
    ref = torch.load(path, weights_only=True)
    tol_out = max(1e-4, 10 * ref['official_fp32_rel_err']['out'])
    tol_grad = max(1e-3, 10 * ref['official_fp32_rel_err']['grad'])
    model = SpatialMamba(out_indices=ref['out_indices'], **ref['config_kwargs'])
    model.load_state_dict(ref['state_dict'])
    model.eval()
    with torch.no_grad():
        model(ref[f'input_{ref["inputs"][0]}'])  # an eval on CPU first: no device-bound cache
    model.cuda()
    errors = {}
    for name in ref['inputs']:
        x = ref[f'input_{name}'].cuda()
        model.load_state_dict(ref['state_dict'])
        model.eval()
        with torch.no_grad():
            out_eval = model(x)
        model.load_state_dict(ref['state_dict'])
        model.train()
        x = x.clone().requires_grad_(True)
        out_train = model(x)
        loss = sum((o * w.cuda()).sum() for o, w in zip(out_train, ref[f'grad_weights_{name}']))
        grad, = torch.autograd.grad(loss, x)
        errors[name] = dict(
            eval=max(max_rel_err(o.cpu(), r) for o, r in zip(out_eval, ref[f'out_eval_{name}'])),
            train=max(max_rel_err(o.cpu(), r) for o, r in zip(out_train, ref[f'out_train_{name}'])),
            grad=max_rel_err(grad.cpu(), ref[f'grad_input_{name}']))
    print(f'\nCUDA (kernel: {kernel_available()}) vs official fp64, worst stage:',
          {n: {k: f'{v:.2e}' for k, v in e.items()} for n, e in errors.items()})
    for err in errors.values():
        assert err['eval'] <= tol_out and err['train'] <= tol_out and err['grad'] <= tol_grad


def test_cuda_matches_cpu_on_odd_sizes():
    torch.manual_seed(0)
    model = SpatialMamba(dims=16, depths=[1, 1, 2, 1], drop_path_rate=0.0)
    with torch.no_grad():  # unit-variance Linears and non-trivial fusion, so every part shows
        for name, p in model.named_parameters():
            if name.endswith('weight') and p.dim() == 2 and 'proj_weight' not in name:
                p.mul_(1 / (0.02 * p.shape[1] ** 0.5))
            if 'state_fusion' in name:
                p.mul_(1 + 0.2 * torch.randn_like(p))
    x = torch.randn(2, 3, 33, 47)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for device in ('cpu', 'cuda'):
        model.to(device)
        model.load_state_dict(state)  # the same BatchNorm statistics on both devices
        xd = x.to(device).requires_grad_(True)
        model.train()
        outs = model(xd)
        if device == 'cpu':  # random weights: the sum of squares of LayerNorm outputs is ~flat
            weights = [torch.randn_like(o) for o in outs]
        loss = sum((o * w.to(device)).sum() for o, w in zip(outs, weights))
        grad, = torch.autograd.grad(loss, xd)
        model.eval()
        with torch.no_grad():
            evals = model(xd)
        results[device] = [o.detach().cpu() for o in outs], grad.cpu(), [o.cpu() for o in evals]
    (t_cpu, g_cpu, e_cpu), (t_gpu, g_gpu, e_gpu) = results['cpu'], results['cuda']
    errs = dict(train=[max_rel_err(a, b) for a, b in zip(t_gpu, t_cpu)],
                eval=[max_rel_err(a, b) for a, b in zip(e_gpu, e_cpu)],
                grad=max_rel_err(g_gpu, g_cpu))
    print('\nCUDA vs CPU 2x3x33x47:', errs)
    assert max(errs['train'] + errs['eval']) < 1e-4 and errs['grad'] < 1e-3


@pytest.mark.skipif(not (torch.cuda.is_available() and kernel_available()),
                    reason="needs mamba-ssm's selective_scan_cuda")
def test_state_scan_kernel_matches_torch_scan():
    g = torch.Generator().manual_seed(0)
    batch, dim, length = 2, 64, 3000
    cpu = dict(u=torch.randn(batch, dim, length, generator=g),
               delta=torch.randn(batch, dim, length, generator=g) * 0.5,
               A=-torch.rand(dim, 1, generator=g) * 2 - 0.1,
               B=torch.randn(batch, 1, length, generator=g),
               delta_bias=torch.randn(dim, generator=g) * 0.3)
    w = torch.randn(batch, dim, 1, length, generator=g)
    results = []
    for device in ('cpu', 'cuda'):
        args = {k: v.to(device).requires_grad_(True) for k, v in cpu.items()}
        h = selective_scan_states(**args)
        assert h.dtype == torch.float32 and h.shape == (batch, dim, 1, length)
        results.append((h, torch.autograd.grad((h * w.to(device)).sum(), list(args.values()))))
    (h_cpu, g_cpu), (h_gpu, g_gpu) = results
    errs = {'h': max_rel_err(h_gpu.cpu(), h_cpu)}
    errs.update({f'grad_{n}': max_rel_err(a.cpu(), b) for n, a, b in zip(cpu, g_gpu, g_cpu)})
    print('\nstate scan kernel vs torch:', {k: f'{v:.2e}' for k, v in errs.items()})
    assert errs['h'] < 1e-4 and max(errs.values()) < 1e-3


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_has_no_nan(dtype):
    torch.manual_seed(0)
    model = SpatialMamba(arch='tiny').cuda().train()
    x = torch.randn(2, 3, 224, 224, device='cuda')
    with torch.autocast('cuda', dtype=dtype):
        outs = model(x)
        loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    assert all(torch.isfinite(o).all() for o in outs)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        with torch.autocast('cuda', dtype=dtype):
            evals = model(x)
        ref = model(x)
    assert all(torch.isfinite(o).all() for o in evals)
    print(f'\n{dtype} autocast eval vs fp32, per stage:',
          [f'{max_rel_err(o.float(), r):.2e}' for o, r in zip(evals, ref)])
