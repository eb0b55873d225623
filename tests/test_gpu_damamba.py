"""DAMamba on CUDA (skipped without a GPU): equal to the CPU model, and float16 / bfloat16
autocast runs forward and backward without NaN (the official DCNv3 refuses bfloat16)."""
import pytest
import torch

from _refs import max_rel_err
from mmdefscan.models.backbones import DAMamba
from mmdefscan.ops import adaptive_sample, kernel_available

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')

SMALL = dict(depths=[1, 2, 2, 1], dims=[32, 64, 96, 128], mlp_ratios=[4, 4, 3, 3], head_dim=16,
             layerscale=[False, False, True, True])


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def perturbed_model(**kwargs):
    """Small model with visible offsets and layer scales (official init hides both); no drop
    path, so that train-mode runs are deterministic."""
    torch.manual_seed(0)
    model = DAMamba(**SMALL, drop_path_rate=0.0, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('da_scan.offset.weight'):
                p.mul_(8)
            elif name.endswith('da_scan.offset.bias'):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
            elif 'layer_scale' in name:
                p.copy_(0.5 + 0.1 * torch.randn(p.shape, generator=g))
    return model


def test_cuda_matches_cpu_forward_and_backward(no_tf32):
    model = perturbed_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 160, 224)
    results = {}
    for device in ('cpu', 'cuda'):
        model.to(device)
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            evals = model(x.to(device))
        model.load_state_dict(state)
        model.train()
        xx = x.to(device).requires_grad_(True)
        outs = model(xx)
        g = torch.Generator().manual_seed(2)
        loss = sum((o * torch.randn(o.shape, generator=g).to(device)).sum() for o in outs)
        grad, = torch.autograd.grad(loss, xx)
        results[device] = ([o.cpu() for o in outs], grad.cpu(), [o.cpu() for o in evals])
    errs = dict(
        train=[max_rel_err(a, b) for a, b in zip(results['cuda'][0], results['cpu'][0])],
        eval=[max_rel_err(a, b) for a, b in zip(results['cuda'][2], results['cpu'][2])],
        grad=max_rel_err(results['cuda'][1], results['cpu'][1]))
    print(f'\nDAMamba CUDA vs CPU (fp32, no TF32, mamba-ssm kernel: {kernel_available()}):',
          {k: [f'{e:.1e}' for e in v] if isinstance(v, list) else f'{v:.1e}'
           for k, v in errs.items()})
    assert max(errs['train'] + errs['eval']) < 1e-4 and errs['grad'] < 1e-3


def test_sampling_cuda_matches_cpu_near_borders():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(2, 48, 9, 13, generator=g, dtype=torch.float64)
    offsets = (torch.rand(2, 9, 13, 6, generator=g, dtype=torch.float64) - 0.5) * 30
    cpu = adaptive_sample(values, offsets, 3)
    cuda = adaptive_sample(values.cuda(), offsets.cuda(), 3).cpu()
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=1e-13)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_forward_backward_has_no_nan(dtype):
    model = perturbed_model().cuda().train()
    x = torch.randn(2, 3, 224, 256, device='cuda')
    with torch.autocast('cuda', dtype=dtype):
        outs = model(x)
        loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    assert all(torch.isfinite(o).all() for o in outs)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cuda', dtype=dtype):
            low = model(x)
    errs = [max_rel_err(o, r) for o, r in zip(low, ref)]
    print(f'\n{dtype} autocast vs fp32 (eval), per stage:', [f'{e:.1e}' for e in errs])
    assert all(torch.isfinite(o).all() for o in low) and max(errs) < 0.1


def test_with_cp_on_cuda_matches(no_tf32):
    plain = perturbed_model().cuda().train()
    checkpointed = perturbed_model(with_cp=True).cuda().train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 128, 128, device='cuda')
    weights = [torch.randn(2, c, 128 // 2 ** (i + 2), 128 // 2 ** (i + 2), device='cuda')
               for i, c in enumerate(SMALL['dims'])]
    grads = []
    for model in (plain, checkpointed):
        sum((o * w).sum() for o, w in zip(model(x), weights)).backward()
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    # the same up to the order of CUDA's atomic additions (grid_sample's backward); measured over
    # all parameters at once, since some gradients are zero up to rounding (conv biases before
    # a train-mode BatchNorm)
    err = max_rel_err(torch.cat([g.flatten() for g in grads[1]]),
                      torch.cat([g.flatten() for g in grads[0]]))
    print(f'\nwith_cp vs plain on CUDA, all parameter gradients: {err:.1e}')
    assert err < 1e-4
