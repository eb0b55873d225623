"""CUDA checks (skipped without a GPU; tools/gpu/run_gpu_tests.sh runs them on a CUDA machine)."""
import pytest
import torch

from _refs import max_rel_err
from mmdefscan.models.backbones import DefMamba
from mmdefscan.ops import kernel_available, selective_scan_fn, selective_scan_ref

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def scan_inputs(device, batch=2, groups=3, dim=96, state=16, length=3136, dtype=torch.float32):
    g = torch.Generator(device='cpu').manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device, dtype)  # noqa: E731
    return dict(u=r(batch, dim, length), delta=r(batch, dim, length) * 0.5,
                A=-torch.rand(dim, state, generator=g).to(device) * 4 - 0.1,
                B=r(batch, groups, state, length), C=r(batch, groups, state, length),
                D=r(dim).float(), delta_bias=r(dim).float() * 0.3)


@cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and kernel_available()), reason="needs mamba-ssm's selective_scan_cuda")
def test_kernel_matches_torch_path_forward_and_backward():
    args = scan_inputs('cuda')
    for v in args.values():
        v.requires_grad_(True)
    y_k, last_k = selective_scan_fn(**args, delta_softplus=True, return_last_state=True)
    y_t, last_t = selective_scan_ref(**args, delta_softplus=True, return_last_state=True)
    w = torch.randn_like(y_k)
    g_k = torch.autograd.grad((y_k * w).sum(), list(args.values()))
    g_t = torch.autograd.grad((y_t * w).sum(), list(args.values()))
    errs = {'out': max_rel_err(y_k, y_t), 'last_state': max_rel_err(last_k, last_t)}
    errs.update({f'grad_{n}': max_rel_err(a, b) for n, a, b in zip(args, g_k, g_t)})
    print('\nkernel vs torch (max rel err):', {k: f'{v:.2e}' for k, v in errs.items()})
    assert errs['out'] < 1e-4 and errs['last_state'] < 1e-4
    assert max(v for k, v in errs.items() if k.startswith('grad')) < 1e-3


@cuda
@pytest.mark.parametrize('length', [3136, 5000])
def test_triton_scan_matches_torch_path(length):
    """DefMamba's scans (no gate, no last state) run the Triton forward and backward. 5000
    steps: time segments in the forward and the backward (2 x 96 channels are too few
    programs)."""
    args = scan_inputs('cuda', length=length)
    with torch.no_grad():
        y_infer = selective_scan_fn(**args, delta_softplus=True)
    for v in args.values():
        v.requires_grad_(True)
    y_k = selective_scan_fn(**args, delta_softplus=True)
    y_t = selective_scan_ref(**args, delta_softplus=True)
    w = torch.randn_like(y_k)
    g_k = torch.autograd.grad((y_k * w).sum(), list(args.values()))
    g_t = torch.autograd.grad((y_t * w).sum(), list(args.values()))
    errs = {'out': max_rel_err(y_k, y_t), 'out_no_grad': max_rel_err(y_infer, y_t)}
    errs.update({f'grad_{n}': max_rel_err(a, b) for n, a, b in zip(args, g_k, g_t)})
    print(f'\ntriton scan vs torch, L={length} (max rel err):',
          {k: f'{v:.2e}' for k, v in errs.items()})
    assert errs['out'] < 1e-4 and errs['out_no_grad'] < 1e-4
    assert max(v for k, v in errs.items() if k.startswith('grad')) < 1e-3


@cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_has_no_nan(dtype):
    torch.manual_seed(0)
    model = DefMamba(arch='tiny').cuda()
    x = torch.randn(2, 3, 224, 224, device='cuda')
    with torch.autocast('cuda', dtype=dtype):
        outs = model.train()(x)
        loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    assert all(torch.isfinite(o).all() for o in outs)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cuda', dtype=dtype):
            low = model(x)
    errs = [max_rel_err(o, r) for o, r in zip(low, ref)]
    print(f'\n{dtype} autocast vs fp32 (eval), per stage:', [f'{e:.2e}' for e in errs])
    assert max(errs) < 0.05


@cuda
def test_defmamba_cuda_matches_cpu():
    torch.manual_seed(0)
    model = DefMamba(arch='tiny').eval()
    x = torch.randn(2, 3, 160, 192)
    with torch.no_grad():
        ref = model(x)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        out = model.cuda()(x.cuda())
    errs = [max_rel_err(o.cpu(), r) for o, r in zip(out, ref)]
    print('\nDefMamba-T CUDA vs CPU (fp32, no TF32), per stage:', [f'{e:.2e}' for e in errs])
    assert max(errs) < 1e-4


def training_step(name, dtype, autocast_cache=True, **kwargs):
    """(tiny backbone in train mode, a step: forward on a fixed 2 x 224 x 224 batch, a fixed
    random projection of the outputs as the loss, backward; returns the loss). Not the outputs'
    mean: each stage ends in a LayerNorm whose outputs average to its bias, so every gradient
    before it would be rounding noise."""
    from mmdefscan.models import backbones
    model = getattr(backbones, name)(arch='tiny', **kwargs).cuda().train()
    x = torch.randn(2, 3, 224, 224, device='cuda')
    weights = []

    def step():
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32,
                            cache_enabled=autocast_cache):
            outs = model(x)
        if not weights:
            weights.extend(torch.randn(out.shape, device='cuda') for out in outs)
        loss = sum((out.float() * w).mean() for out, w in zip(outs, weights))
        loss.backward()
        return loss
    return model, step


@cuda
@pytest.mark.parametrize('name', ['DefMamba', 'SpatialMamba', 'DAMamba'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_training_step_never_synchronises(name, dtype):
    """A forward + backward never waits for the GPU (no .item(), no tensor built from a list):
    one synchronisation per block kept the host from running ahead of the kernels."""
    _, step = training_step(name, dtype)
    step()  # the first call compiles the Triton kernels and fills the allocator's cache
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode('default')


def biases_before_batchnorm(model):
    """Names of the biases of layers followed by a BatchNorm among their parent's children
    (``nn.Sequential(conv, bn)``, a conv-norm module): in training mode the norm subtracts the
    batch mean, so such a bias gets no gradient in exact arithmetic."""
    names = set()
    for prefix, module in model.named_modules():
        children = list(module.named_children())
        for (name, layer), (_, following) in zip(children, children[1:]):
            if isinstance(following, torch.nn.modules.batchnorm._BatchNorm) \
                    and isinstance(getattr(layer, 'bias', None), torch.nn.Parameter):
                names.add(f'{prefix}.{name}.bias' if prefix else f'{name}.bias')
    return names


def test_biases_before_batchnorm_are_found():
    from mmdefscan.models.backbones import DAMamba, SpatialMamba
    damamba = biases_before_batchnorm(DAMamba(arch='tiny'))
    assert 'stages.2.downsample.0.bias' in damamba
    spatial = biases_before_batchnorm(SpatialMamba(arch='tiny'))
    assert 'layers.1.downsample.conv.2.conv.bias' in spatial
    assert 'layers.1.downsample.conv.0.conv.bias' not in spatial  # conv -> ReLU
    assert not biases_before_batchnorm(DefMamba(arch='tiny'))  # LayerNorms only


@cuda
@pytest.mark.parametrize('name', ['DefMamba', 'SpatialMamba', 'DAMamba'])
def test_training_step_replays_from_a_cuda_graph(name):
    """Forward + backward captured in a CUDA graph (benchmark.py --cuda-graphs) replays to the
    eager gradients: the kernels neither synchronise nor allocate outside the graph's pool. The
    step runs under bf16 autocast, and inside a capture cuDNN may pick another algorithm, which
    moves a bf16 gradient by a few roundings (Spatial-Mamba, where two eager steps agree
    exactly, shows 0.5-2% as one vector). So all gradients as one vector must agree within eight
    bf16 roundings (8 x 2^-8 = 3.1e-2), and each tensor within a quarter of its largest value or
    ten times the difference between two eager steps (atomic adds): a sum that nearly cancels
    moves by more than eight roundings of itself (Spatial-Mamba's stem norm bias, which feeds a
    conv and a training-mode BatchNorm, up to about 0.13), while garbage or an unreplayed buffer
    is off by O(1)."""
    torch.manual_seed(0)
    model, step = training_step(name, torch.bfloat16, autocast_cache=False, drop_path_rate=0.0)

    def eager():
        model.zero_grad(set_to_none=True)
        return step().detach(), [None if p.grad is None else p.grad.clone()
                                 for p in model.parameters()]
    eager_loss, eager_grads = eager()
    _, again = eager()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(stream)
    model.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_loss = step()
    graph.replay()  # the same input and weights: the eager numbers
    torch.cuda.synchronize()
    assert max_rel_err(graph_loss, eager_loss) < 1e-5
    assert sum(g is not None and bool(g.abs().max() > 0) for g in eager_grads) > 10
    # a gradient that vanishes in exact arithmetic is rounding noise: every gradient is measured
    # against at least 1e-3 of the model's largest, and the biases in front of a training-mode
    # BatchNorm (DAMamba's stem and downsampling convs, whose "relative" error can exceed 1)
    # only have to stay near zero, with and without the graph: within 5% of the model's largest
    # gradient (bf16 noise reaches about 1% for a Spatial-Mamba downsampling conv)
    largest = max(float(g.abs().max()) for g in eager_grads if g is not None)
    floor = 1e-3 * largest
    vanishing = biases_before_batchnorm(model)

    def err(a, b):
        return float((a - b).abs().max()) / max(float(b.abs().max()), floor)
    compared = []
    for (key, p), grad, grad_again in zip(model.named_parameters(), eager_grads, again):
        assert (p.grad is None) == (grad is None), key
        if key in vanishing:
            assert max(float(p.grad.abs().max()), float(grad.abs().max())) <= 0.05 * largest, key
        elif grad is not None:
            assert err(p.grad, grad) <= max(0.25, 10 * err(grad_again, grad)), key
            compared.append((p.grad.flatten(), grad.flatten()))
    replayed, reference = (torch.cat(vectors).float() for vectors in zip(*compared))
    assert float((replayed - reference).norm() / reference.norm()) <= 8 * 2 ** -8
