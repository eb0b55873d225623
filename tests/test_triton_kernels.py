"""The Triton kernels equal their PyTorch references, forward and backward. Without a GPU they
run in Triton's interpreter (conftest sets TRITON_INTERPRET=1); on a GPU on CUDA."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from _refs import load_ref, max_rel_err, reference_files, run_case, saved_bytes
from mmdefscan.models.backbones import DAMamba, DefMamba, SpatialMamba
from mmdefscan.ops import (DeformableScan, DepthwiseConv2d, LayerNorm, layer_norm_ref,
                           merge_scans_gate_ref)
from mmdefscan.ops import deformable_scan as deformable_scan_module
from mmdefscan.ops import depthwise_conv as depthwise_conv_module
from mmdefscan.ops import dynamic_adaptive_scan as adaptive_scan_module
from mmdefscan.ops import layer_norm as layer_norm_module
from mmdefscan.ops import scan_merge as scan_merge_module
from mmdefscan.ops import selective_scan as selective_scan_module
from mmdefscan.ops.depthwise_conv import depthwise_conv2d_triton
from mmdefscan.ops.layer_norm import layer_norm_triton
from mmdefscan.ops.scan_merge import merge_scans_gate_triton
from mmdefscan.ops.state_fusion import StateFusion, fuse_read_out_ref
from mmdefscan.ops import state_fusion as state_fusion_module
from mmdefscan.ops.selective_scan import (selective_scan_ref, selective_scan_triton,
                                          triton_scan_supported)

pytest.importorskip('triton')  # installed by tools/setup_env.sh; CI runs these tests
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


@pytest.fixture
def triton_everywhere(monkeypatch):
    """Route the model's LayerNorms, scan merges, deformable and adaptive sampling and state-fusion
    read-outs through the kernels (the last two in training too), CPU tensors included, and on
    CUDA the selective scan and the depthwise convs too (in the interpreter a whole model's scans
    or 9x9 convs would take many minutes: their tests below use small shapes)."""
    modules = [layer_norm_module, scan_merge_module, deformable_scan_module, state_fusion_module,
               adaptive_scan_module]
    for module in (state_fusion_module, adaptive_scan_module):
        monkeypatch.setattr(module, 'TRAIN_KERNEL', True)
    on_cuda_only = [selective_scan_module, depthwise_conv_module]
    for module in modules + (on_cuda_only if DEVICE == 'cuda' else []):
        monkeypatch.setattr(module, 'use_triton', lambda *args, **kwargs: True)
    monkeypatch.setenv('MMDEFSCAN_TRITON_MIN_NUMEL', '0')  # the depthwise convs' size rule


def test_small_maps_take_the_pytorch_path_only_in_training(monkeypatch):
    """Kernels for inference and for large maps; PyTorch's path for a map below the op's size
    while autograd records (its backward costs the host less); the env override."""
    from mmdefscan.ops import _triton

    def cuda_tensor(numel):  # use_triton reads only these two
        return SimpleNamespace(is_cuda=True, numel=lambda: numel)
    size = layer_norm_module.TRAIN_MIN_NUMEL
    small, large = cuda_tensor(size - 1), cuda_tensor(size)
    monkeypatch.setattr(_triton, 'HAS_TRITON', True)
    assert not _triton.use_triton(small, size)
    assert _triton.use_triton(large, size) and _triton.use_triton(small)
    with torch.no_grad():
        assert _triton.use_triton(small, size)
    monkeypatch.setenv('MMDEFSCAN_TRITON_MIN_NUMEL', '0')
    assert _triton.use_triton(small, size)
    monkeypatch.setenv('MMDEFSCAN_TRITON', '0')
    assert not _triton.use_triton(large)


def test_every_kernel_compiles_for_a_gpu_target():
    """The interpreter accepts code that Triton's compiler refuses (a plain-float module global
    fails only on a GPU): compile every kernel for sm_90 here, without a GPU."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    script = Path(__file__).with_name('triton_compile_check.py')
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = {line.split()[1] for line in done.stdout.splitlines() if line.startswith('compiled')}
    kernels_dir = Path(__file__).parents[1] / 'mmdefscan/ops/kernels'
    defined = {line.split('(')[0][4:] for path in kernels_dir.glob('*.py')
               for line in path.read_text().splitlines()
               if line.startswith('def _') and line.split('(')[0].endswith('_kernel')}
    assert defined and compiled == defined


def grads(out, inputs, weight):
    return torch.autograd.grad(out, inputs, weight)


LAYOUTS = {
    'channels-last': lambda: torch.randn(2, 5, 7, 96),
    'permuted-channel-first': lambda: torch.randn(2, 96, 5, 7).permute(0, 2, 3, 1),
    'rows': lambda: torch.randn(9, 40),
    'gate-half-of-a-projection': lambda: torch.randn(2, 5, 7, 48)[..., 24:],
    'unmergeable-token-dims': lambda: torch.randn(2, 7, 5, 24).transpose(1, 2),
}


@pytest.mark.parametrize('layout', list(LAYOUTS))
@pytest.mark.parametrize('fused', ['plain', 'scale+gelu'])
def test_layer_norm_kernel_matches_torch(layout, fused):
    x = LAYOUTS[layout]().double().to(DEVICE)
    channels = x.shape[-1]
    weight = torch.randn(channels, dtype=torch.float64, device=DEVICE)
    bias = torch.randn_like(weight)
    scale = (torch.rand(x.shape[0], channels, dtype=torch.float64, device=DEVICE)
             if fused != 'plain' and x.dim() > 2 else None)
    gelu = fused != 'plain'
    inputs = [t.clone().requires_grad_() for t in (x, weight, bias)] + \
        ([scale.clone().requires_grad_()] if scale is not None else [])
    out = layer_norm_triton(inputs[0], *inputs[1:3], 1e-5, *inputs[3:], gelu=gelu)
    ref_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    ref = layer_norm_ref(ref_inputs[0], *ref_inputs[1:3], 1e-5, *ref_inputs[3:], gelu=gelu)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if layout in ('channels-last', 'permuted-channel-first', 'rows'):
        assert out.stride() == x.stride()  # the input's memory layout is kept (no copies)
    assert max_rel_err(out, ref) < 1e-5  # the kernel computes in fp32
    w = torch.randn_like(ref)
    for name, a, b in zip(['x', 'weight', 'bias', 'scale'], grads(out, inputs, w),
                          grads(ref, ref_inputs, w)):
        assert max_rel_err(a, b) < 1e-5, name


@pytest.mark.parametrize('autocast_output, expected', [(True, torch.bfloat16),
                                                        (False, torch.float32)])
def test_layer_norm_module_output_dtype_under_autocast(triton_everywhere, autocast_output,
                                                       expected):
    """Like torch's autocast policy (fp32 out) unless the norm only feeds a Linear."""
    norm = LayerNorm(32, autocast_output=autocast_output).to(DEVICE)
    x = torch.randn(2, 6, 6, 32, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == expected
    ref = torch.nn.functional.layer_norm(x, (32,), norm.weight, norm.bias)
    torch.testing.assert_close(out, ref.to(expected))  # within one rounding of the dtype


def test_fused_offset_norm_stays_on_the_kernel_in_training(monkeypatch):
    """GELU(LN(x * scale)) keeps the kernel on small maps in training, where the plain norm takes
    native LayerNorm: the kernel keeps x for the backward, the PyTorch composition also the
    product and the norm's output (3x the bytes, counted here; the plain norm's two paths keep
    the same)."""
    asked = []
    monkeypatch.setattr(layer_norm_module, 'use_triton',
                        lambda x, train_min_numel=0: asked.append(train_min_numel) or False)
    norm = LayerNorm(32).to(DEVICE)
    x = torch.randn(2, 6, 6, 32, device=DEVICE, requires_grad=True)
    scale = torch.rand(2, 32, device=DEVICE, requires_grad=True)
    norm(x), norm(x, scale=scale, gelu=True)
    assert asked == [layer_norm_module.TRAIN_MIN_NUMEL, 0]

    def map_bytes(run):  # of the map-sized tensors kept
        return saved_bytes(run, lambda t: t.numel() == x.numel())[1]
    kernel = map_bytes(lambda: layer_norm_triton(x, norm.weight, norm.bias, 1e-5, scale, True))
    composition = map_bytes(lambda: layer_norm_ref(x, norm.weight, norm.bias, 1e-5, scale, True))
    assert kernel == x.numel() * 4 and composition == 3 * kernel
    assert map_bytes(lambda: layer_norm_triton(x, norm.weight, norm.bias)) == map_bytes(
        lambda: torch.nn.functional.layer_norm(x, (32,), norm.weight, norm.bias)) == kernel


def test_training_routing_keeps_no_more_per_image_than_the_kernels(monkeypatch):
    """Training sends small maps of the plain LayerNorm and the deformable tokens to PyTorch
    (``use_triton``'s size rule). Per image, the tensors kept for the backward must not grow: the
    PyTorch paths add per-batch constants only (the resized rpe table). Here every map counts as
    small, and the kept bytes of one and two images give the per-image cost."""
    def kept_bytes(model, batch):  # not counting the parameters
        params = {p.data_ptr() for p in model.parameters()}
        return saved_bytes(lambda: model(torch.randn(batch, 3, 64, 64, device=DEVICE)),
                           lambda t: t.data_ptr() not in params)[1]

    model = DefMamba(arch='tiny', drop_path_rate=0.0).to(DEVICE).train()
    per_image = {}
    for routing, rule in (('kernels', lambda *args, **kwargs: True),
                          ('routed', lambda x, train_min_numel=0: not train_min_numel)):
        for module in (layer_norm_module, deformable_scan_module, scan_merge_module):
            monkeypatch.setattr(module, 'use_triton', rule)
        per_image[routing] = kept_bytes(model, 2) - kept_bytes(model, 1)
    assert per_image['routed'] <= 1.01 * per_image['kernels']


@pytest.mark.parametrize('kernel_size, bias', [(3, True), (9, True), (5, False)])
@pytest.mark.parametrize('size', [(1, 1), (5, 7), (10, 130)])
def test_depthwise_conv_kernel_matches_torch(kernel_size, bias, size):
    """Forward, input, weight and bias gradients against F.conv2d in float64; (10, 130) spans
    two tiles each way, (1, 1) has every tap but the centre off the map."""
    x = torch.randn(2, 3, *size, dtype=torch.float64, device=DEVICE)
    weight = torch.randn(3, 1, kernel_size, kernel_size, dtype=torch.float64, device=DEVICE)
    params = [x, weight] + ([torch.randn(3, dtype=torch.float64, device=DEVICE)] if bias else [])
    inputs = [t.float().requires_grad_() for t in params]
    ref_inputs = [t.clone().requires_grad_() for t in params]
    out = depthwise_conv2d_triton(*inputs)
    ref = torch.nn.functional.conv2d(*ref_inputs, padding=kernel_size // 2, groups=3)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert max_rel_err(out, ref) < 1e-5
    w = torch.randn_like(ref)
    for name, a, b in zip(['x', 'weight', 'bias'], grads(out, inputs, w.float()),
                          grads(ref, ref_inputs, w)):
        assert a.shape == b.shape and max_rel_err(a, b) < 1e-5, name


def test_depthwise_conv_module_is_a_conv_and_follows_autocast(monkeypatch):
    """Same keys and parameters as nn.Conv2d (checkpoints load either way); under autocast the
    output is in the autocast dtype, within its rounding of the fp32 conv; float64 stays exact."""
    monkeypatch.setattr(depthwise_conv_module, 'use_triton', lambda *args, **kwargs: True)
    monkeypatch.setattr(depthwise_conv_module, 'MIN_NUMEL', 0)
    routed = []
    monkeypatch.setattr(depthwise_conv_module, 'depthwise_conv2d_triton',
                        lambda *args: routed.append(args[-1]) or depthwise_conv2d_triton(*args))
    conv = DepthwiseConv2d(8, 7).to(DEVICE)
    plain = torch.nn.Conv2d(8, 8, 7, 1, 3, groups=8).to(DEVICE)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 8, 9, 11, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.bfloat16 and routed == [torch.bfloat16]
    torch.testing.assert_close(out, plain(x).to(torch.bfloat16))
    torch.testing.assert_close(conv.double()(x.double()), plain.double()(x.double()),
                               rtol=1e-12, atol=1e-12)


def test_depthwise_conv_takes_the_kernels_only_where_they_paid(monkeypatch):
    """Kernels of 7 x 7 or more on maps of 8 M elements or more; in training only on float32
    maps (bf16 at a classification batch lost); never float64; the env override sends all."""
    monkeypatch.setattr(depthwise_conv_module, 'use_triton', lambda *args, **kwargs: True)
    pays, big = depthwise_conv_module.kernels_pay, depthwise_conv_module.MIN_NUMEL

    def fake_map(numel, dtype=torch.float32):  # what kernels_pay reads of x
        return SimpleNamespace(numel=lambda: numel, dtype=dtype, requires_grad=True)
    weight = SimpleNamespace(requires_grad=True)
    assert pays(fake_map(big), 9, weight) and pays(fake_map(big), 7, weight)
    assert not pays(fake_map(big), 5, weight) and not pays(fake_map(big - 1), 9, weight)
    assert not pays(fake_map(big, torch.bfloat16), 9, weight)
    assert not pays(fake_map(big, torch.float64), 9, weight)
    with torch.no_grad():
        assert pays(fake_map(big, torch.bfloat16), 9, weight)
    monkeypatch.setenv('MMDEFSCAN_TRITON_MIN_NUMEL', '0')
    assert pays(fake_map(1), 3, weight)


def test_layer_norm_module_over_several_dims_stays_exact(triton_everywhere):
    """The kernel normalises over one dim: a LayerNorm over two takes the PyTorch path."""
    norm = LayerNorm((4, 8)).to(DEVICE)
    x = torch.randn(3, 4, 8, device=DEVICE)
    torch.testing.assert_close(norm(x), torch.nn.functional.layer_norm(x, (4, 8)))


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('size', [(5, 7), (1, 1), (9, 16)])
def test_scan_merge_kernel_matches_torch(dtype, size):
    batch, dim, length = 3, 40, size[0] * size[1]
    ys = torch.randn(batch, 3, dim, length, dtype=dtype, device=DEVICE, requires_grad=True)
    projection = torch.randn(batch, *size, 2 * dim, dtype=dtype, device=DEVICE,
                             requires_grad=True)
    z = projection[..., dim:]  # the gate is the second half of in_proj's output, as in DefMamba
    order = torch.stack([torch.randperm(length) for _ in range(batch)]).to(DEVICE)
    out = merge_scans_gate_triton(ys, order, z)
    ref = merge_scans_gate_ref(ys, order, z)
    assert out.shape == ref.shape == (batch, *size, dim)
    assert max_rel_err(out, ref) < 1e-6
    w = torch.randn_like(ref)
    for a, b in zip(grads(out, [ys, projection], w), grads(ref, [ys, projection], w)):
        assert max_rel_err(a, b) < 1e-6
    with torch.no_grad():  # inference skips the saved copy of the merged scans, same output
        torch.testing.assert_close(merge_scans_gate_triton(ys, order, z), out.detach())


@pytest.mark.parametrize('size', [(1, 1), (5, 7), (13, 9)])
def test_state_fusion_read_out_kernel_matches_torch(size):
    """Spatial-Mamba's fused read-out (clamped dilated taps, C * fused + D * u, channel-last
    store) against the PyTorch eval path (replicate pad + merged 11x11 conv); maps smaller and
    larger than the widest dilation, channels not a multiple of the tile, C a strided view."""
    from mmdefscan.ops.kernels.state_fusion_triton import fuse_read_out_fwd
    batch, dim, length = 2, 40, size[0] * size[1]
    fusion = StateFusion(dim).to(DEVICE).eval()
    with torch.no_grad():
        for param in fusion.parameters():
            param.copy_(torch.randn_like(param))
    h = torch.randn(batch, dim, *size, device=DEVICE)
    x_dbl = torch.randn(batch, 3, length, dtype=torch.bfloat16, device=DEVICE)
    C = x_dbl[:, 2:]  # (B, 1, L) with the batch stride of x_proj's output, as in the model
    u = torch.randn(batch, dim, length, dtype=torch.bfloat16, device=DEVICE)
    D = torch.randn(dim, device=DEVICE)
    with torch.no_grad():
        ref = fuse_read_out_ref(fusion, h, C, u, D)
        out = fuse_read_out_fwd(h, list(fusion.kernels()), fusion.alpha,
                                C.reshape(batch, length), u, D, torch.float32)
    assert out.shape == ref.shape == (batch, *size, dim) and out.is_contiguous()
    assert ref.dtype == torch.float32
    assert max_rel_err(out, ref) < 1e-5


@pytest.mark.parametrize('size', [(1, 1), (5, 7), (13, 9)])
def test_state_fusion_read_out_backward_matches_torch(monkeypatch, size):
    """The read-out's Triton backward against autograd through the training path (three
    replicate pads and dilated convs): every input's gradient, the kernels' and alphas' included;
    maps smaller and larger than the widest dilation (the pad folds back onto the border), C a
    strided view, u in bfloat16 (its gradient in bfloat16 too)."""
    monkeypatch.setattr(state_fusion_module, 'use_triton', lambda x: True)
    monkeypatch.setattr(state_fusion_module, 'TRAIN_KERNEL', True)
    batch, dim, length = 2, 40, size[0] * size[1]
    fusion = StateFusion(dim).to(DEVICE).train()
    with torch.no_grad():
        for param in fusion.parameters():
            param.copy_(torch.randn_like(param))
    h = torch.randn(batch, dim, *size, device=DEVICE, requires_grad=True)
    x_dbl = torch.randn(batch, 3, length, device=DEVICE, requires_grad=True)
    u = torch.randn(batch, dim, length, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
    D = torch.randn(dim, device=DEVICE, requires_grad=True)
    inputs = [h, x_dbl, u, D, *fusion.parameters()]
    out = fusion.read_out(h, x_dbl[:, 2:], u, D)
    ref = fuse_read_out_ref(fusion, h, x_dbl[:, 2:], u, D)
    assert out.dtype == ref.dtype == torch.float32 and max_rel_err(out, ref) < 1e-5
    weight = torch.randn_like(ref)
    for a, b in zip(grads(out, inputs, weight), grads(ref, inputs, weight)):
        assert a.dtype == b.dtype  # bfloat16: one rounding of the largest value apart
        assert max_rel_err(a, b) < (1e-5 if a.dtype == torch.float32 else 1e-2)


def test_state_fusion_read_out_routing(monkeypatch):
    """float32 states without autograd take the kernel (training or evaluation); under autograd
    the PyTorch path, or with ``TRAIN_KERNEL`` the kernel and its backward; float64 states and
    other dilations than the official always the PyTorch path."""
    calls = []
    monkeypatch.setattr(state_fusion_module, 'use_triton', lambda x: calls.append(x) or True)
    fusion = StateFusion(8).to(DEVICE)
    h = torch.randn(1, 8, 4, 5, device=DEVICE)
    C, u, D = (torch.randn(1, 1, 20, device=DEVICE), torch.randn(1, 8, 20, device=DEVICE),
               torch.randn(8, device=DEVICE))
    ref = fuse_read_out_ref(fusion.eval(), h, C, u, D)
    for training in (False, True):
        fusion.train(training)
        assert torch.equal(fusion.read_out(h, C, u, D), fuse_read_out_ref(fusion, h, C, u, D))
        with torch.no_grad():
            assert max_rel_err(fusion.read_out(h, C, u, D), ref) < 1e-6
    monkeypatch.setattr(state_fusion_module, 'TRAIN_KERNEL', True)
    out = fusion.read_out(h, C, u, D)
    assert type(out.grad_fn).__name__ == '_FuseReadOutBackward' and max_rel_err(out, ref) < 1e-6
    assert len(calls) == 5
    out = fusion.read_out(h.double(), C.double(), u.double(), D.double())
    assert len(calls) == 5 and out.dtype == torch.float64
    ablated = StateFusion(8, dilations=(1, 3)).to(DEVICE)
    assert torch.equal(ablated.read_out(h, C, u, D), fuse_read_out_ref(ablated, h, C, u, D))


@pytest.mark.parametrize('size', [(1, 1), (5, 7), (13, 9)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_adaptive_sample_kernel_matches_torch(size, dtype):
    """DAMamba's sampling kernel against grid_sample: points inside, outside and exactly on the
    map's border lines (-1 and the side: a corner weight of 0 on an outside corner), two and five
    groups, offsets a strided view as the Linear's output is not."""
    from mmdefscan.ops.dynamic_adaptive_scan import adaptive_sample_ref
    from mmdefscan.ops.kernels.adaptive_sample_triton import adaptive_sample_fwd
    batch, channels = 2, 40
    values = torch.randn(batch, channels, *size, device=DEVICE).to(dtype)
    for groups in (2, 5):
        offsets = torch.randn(batch, *size, 4 * groups, device=DEVICE)[..., ::2] * 3
        offsets[0, 0, 0, :2] = torch.tensor([-1.0, float(size[0])])  # x on -1, y on H
        ref = adaptive_sample_ref(values, offsets.to(dtype), groups)
        out = adaptive_sample_fwd(values, offsets.to(dtype), groups)
        assert out.dtype == ref.dtype == dtype and out.shape == ref.shape
        # against the map's largest value (a 1x1 map samples only zeros here); the coordinates
        # round differently (pixel units here, normalised for grid_sample); bf16: one rounding
        error = float((out.double() - ref.double()).abs().max() / values.double().abs().max())
        assert error < (1e-5 if dtype == torch.float32 else 8e-3)


@pytest.mark.parametrize('size', [(1, 1), (5, 7), (13, 9)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_adaptive_sample_backward_matches_torch(monkeypatch, size, dtype):
    """The sampling's Triton backward against grid_sample's: the values' gradient (corners shared
    by several points, corners outside the map) and the offsets' (summed over each group's
    channels: 20, 8 and 4 per group, so one or several channel tiles per group)."""
    from mmdefscan.ops.dynamic_adaptive_scan import adaptive_sample, adaptive_sample_ref
    monkeypatch.setattr(adaptive_scan_module, 'use_triton', lambda x: True)
    monkeypatch.setattr(adaptive_scan_module, 'TRAIN_KERNEL', True)
    batch, channels = 2, 40
    for groups in (2, 5, 10):
        values = torch.randn(batch, channels, *size, device=DEVICE).to(dtype).requires_grad_()
        # about half the points outside the map; no point on a pixel line, where the derivative
        # jumps (bfloat16 offsets are often whole numbers, and grid_sample's normalised
        # coordinates land on either side of them)
        whole = torch.randint(-max(size), max(size), (batch, *size, 2 * groups), device=DEVICE)
        offsets = (whole + 0.1 + 0.8 * torch.rand(whole.shape, device=DEVICE)).to(dtype)
        offsets.requires_grad_()
        out = adaptive_sample(values, offsets, groups)
        ref = adaptive_sample_ref(values, offsets, groups)
        weight = torch.randn_like(ref)
        for a, b in zip(*(grads(y, [values, offsets], weight) for y in (out, ref))):
            assert a.dtype == b.dtype == dtype  # bfloat16: a rounding of the largest value
            assert max_rel_err(a, b) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_adaptive_sample_routing(monkeypatch):
    """The kernel without autograd; under autograd grid_sample, or with ``TRAIN_KERNEL`` the
    kernel and its backward; float64 always the exact PyTorch path."""
    from mmdefscan.ops.dynamic_adaptive_scan import adaptive_sample, adaptive_sample_ref
    calls = []
    monkeypatch.setattr(adaptive_scan_module, 'use_triton', lambda x: calls.append(x) or True)
    values = torch.randn(1, 4, 3, 5, device=DEVICE)
    offsets = torch.randn(1, 3, 5, 4, device=DEVICE, requires_grad=True)
    ref = adaptive_sample_ref(values, offsets, 2)
    assert torch.equal(adaptive_sample(values, offsets, 2), ref)
    with torch.no_grad():
        assert max_rel_err(adaptive_sample(values, offsets, 2), ref) < 1e-6
    monkeypatch.setattr(adaptive_scan_module, 'TRAIN_KERNEL', True)
    out = adaptive_sample(values, offsets, 2)
    assert type(out.grad_fn).__name__ == '_AdaptiveSampleBackward'
    assert max_rel_err(out, ref) < 1e-6 and len(calls) == 3
    out = adaptive_sample(values.double(), offsets.double(), 2)  # float64 stays exact
    assert out.dtype == torch.float64 and len(calls) == 3


def test_scan_merge_rejects_mismatched_shapes():
    ys = torch.randn(2, 3, 8, 12)
    with pytest.raises(ValueError, match='does not match z'):
        merge_scans_gate_triton(ys, torch.arange(12).expand(2, -1), torch.randn(2, 3, 5, 8))


@pytest.mark.parametrize('size', [(6, 7), (1, 5), (9, 9)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_deformable_sampling_kernel_matches_torch(monkeypatch, size, dtype):
    """Sampled + offset-biased tokens in key order, and the gradients of the map and of every
    parameter of the offset network and the rpe table (grid_sample's and the sort's backward).
    Large offsets put points off the map (zero padding)."""
    torch.manual_seed(0)
    scan = DeformableScan(24, stage=1).to(DEVICE)
    with torch.no_grad():
        scan.conv_offset.conv2.weight.mul_(30)
    x = torch.randn(2, 24, *size, device=DEVICE).to(dtype).requires_grad_()
    results = []
    for triton_path in (False, True):
        monkeypatch.setattr(deformable_scan_module, 'use_triton',
                            lambda *args, **kwargs: triton_path)
        scan.zero_grad()
        with torch.autocast(DEVICE, dtype=dtype, enabled=dtype != torch.float32):
            tokens, order = scan(x)
        weight = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1)).to(tokens)
        dx, = torch.autograd.grad((tokens.float() * weight.float()).sum(), x, retain_graph=True)
        (tokens.float() * weight.float()).sum().backward()
        results.append((tokens, order, dx, {n: p.grad for n, p in scan.named_parameters()}))
    (ref_tokens, ref_order, ref_dx, ref_grads), (tokens, order, dx, grads) = results
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert tokens.dtype == dtype and torch.equal(order, ref_order)
    assert max_rel_err(tokens, ref_tokens) < tol and max_rel_err(dx, ref_dx) < tol
    for name, grad in grads.items():
        assert max_rel_err(grad, ref_grads[name]) < max(tol, 1e-4), name


def test_deformable_scan_trains_after_an_inference_mode_call(monkeypatch):
    """The cached coordinate grids are made once per map size; one first made under
    torch.inference_mode (a test loop) is saved for the backward of a later training step."""
    monkeypatch.setattr(deformable_scan_module, 'use_triton', lambda *args, **kwargs: True)
    scan = DeformableScan(8, stage=3).to(DEVICE)
    x = torch.randn(1, 8, 5, 11, device=DEVICE)  # a map size no other test uses
    with torch.inference_mode():
        scan(x)
    tokens, _ = scan(x.requires_grad_())
    tokens.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert scan.rpe_table.grad.abs().sum() > 0


SCAN_CASES = {  # groups, channels per group, states, steps, segments, softplus + bias + D
    'grouped': (2, 8, 3, 150, 1, True),
    'grouped, 3 segments': (2, 8, 3, 700, 3, True),
    # None: as many segments as the few programs ask for. The forward and the backward cut 150
    # steps into 5 segments of 32, and 71 steps into 3, the last of 7 steps (not a multiple of 4)
    'grouped, automatic segments': (2, 8, 3, 150, None, True),
    'one group, 16 states, bare': (1, 4, 16, 71, None, False),
}


def scan_inputs(groups, cpg, n_state, length, full, batch=2, seed=0):
    """fp64 inputs; B and C as strided views of one projection (as DefMamba passes them), or
    (b, N, L) for one group."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    channels = groups * cpg
    proj = rand(batch, groups, 1 + 2 * n_state, length)
    B, C = proj[:, :, 1:1 + n_state], proj[:, :, 1 + n_state:]
    if groups == 1:
        B, C = B[:, 0], C[:, 0]
    delta = rand(batch, channels, length) * 2  # without softplus a time step must be > 0
    inputs = dict(u=rand(batch, channels, length), delta=delta if full else delta.abs(),
                  A=-rand(channels, n_state).abs() * 3, B=B, C=C)
    if full:
        inputs.update(D=rand(channels), delta_bias=rand(channels))
    return inputs


@pytest.mark.parametrize('case', list(SCAN_CASES))
def test_selective_scan_kernel_matches_torch(case):
    """The Triton forward and backward against the exact scan in fp64: partial last groups of
    4 and 16 steps, state count padded to a power of two, forward segments joined by the carry
    pass, backward segments joined by the adjoint's carry pass, grouped or single-group B and C,
    softplus, bias and D on or off."""
    groups, cpg, n_state, length, segments, full = SCAN_CASES[case]
    inputs = scan_inputs(groups, cpg, n_state, length, full)
    ref_in = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y_ref = selective_scan_ref(**ref_in, delta_softplus=full)
    dy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1), dtype=y_ref.dtype)
    grads_ref = torch.autograd.grad(y_ref, list(ref_in.values()), dy)
    ins = {k: v.to(DEVICE, torch.float32).requires_grad_() for k, v in inputs.items()}
    y = selective_scan_triton(**ins, delta_softplus=full, segments=segments)
    grads = torch.autograd.grad(y, list(ins.values()), dy.to(y))
    assert y.dtype == torch.float32 and max_rel_err(y.cpu(), y_ref) < 1e-5
    for name, grad, ref in zip(ins, grads, grads_ref):
        assert grad.shape == ref.shape and max_rel_err(grad.cpu(), ref) < 1e-5, name


@pytest.mark.parametrize('programs, length, expected', [
    (9, 3136, (49, 64)),  # one 224x224 image, stage 0 of DefMamba-S: at most 64 segments
    (18, 67200, (64, 1056)),  # two Mask R-CNN images, stage 0
    (144, 1050, (14, 80)),  # stage 3: about as many as make 2112 programs
    (576, 3136, (1, 3136)),  # a classification batch fills the GPU: no segments
])
def test_forward_time_segments(programs, length, expected):
    """The forward's split: below 264 programs into as many segments as make 2112 programs, at
    most 64, each a multiple of 16 steps that together cover the sequence."""
    from mmdefscan.ops.kernels import selective_scan_triton as kernels
    n_seg, seg_len = kernels.segmentation(programs, length, kernels.SEG_ALIGN,
                                          below=kernels.SEGMENT_BELOW, most=kernels.MAX_SEGMENTS)
    assert (n_seg, seg_len) == expected
    assert (n_seg - 1) * seg_len < length <= n_seg * seg_len


def test_segmented_scan_keeps_the_backward_checkpoints(monkeypatch):
    """On time-segmented calls the forward's y pass also writes the states the backward starts
    from, and the backward then runs no forward pass of its own; its gradients are the same bits
    as from recomputed states. An unsegmented call keeps nothing."""
    from mmdefscan.ops.kernels import selective_scan_triton as kernels
    inputs = scan_inputs(2, 8, 3, 150, True)
    args = [inputs[k].to(DEVICE, torch.float32) for k in ('u', 'delta', 'A', 'B', 'C', 'D',
                                                          'delta_bias')]
    y, kept = kernels.scan_fwd(*args, True, segments=3, keep_checkpoints=True)
    assert kept is not None and kernels.scan_fwd(*args, True, segments=1,
                                                 keep_checkpoints=True)[1] is None
    assert torch.equal(y, kernels.scan_fwd(*args, True, segments=3)[0])
    passes, forward_passes = [], kernels._forward_passes
    monkeypatch.setattr(kernels, '_forward_passes',
                        lambda *a, **k: passes.append(1) or forward_passes(*a, **k))
    dy = torch.randn_like(y)
    from_kept = kernels.scan_bwd(dy, *args, True, segments=3, ckpt_h=kept)
    assert not passes
    recomputed = kernels.scan_bwd(dy, *args, True, segments=3)
    assert passes == [1]
    for a, b in zip(from_kept, recomputed):
        assert torch.equal(a, b)
    # the autograd function keeps them when an input needs a gradient
    u = args[0].clone().requires_grad_()
    out = selective_scan_triton(u, *args[1:5], D=args[5], delta_bias=args[6],
                                delta_softplus=True, segments=3)
    passes.clear()
    out.backward(dy)
    assert not passes and torch.equal(u.grad, from_kept[0])


def test_selective_scan_routes_only_what_the_kernel_covers(monkeypatch):
    """selective_scan_fn takes the Triton scan for variable B, C without a gate (DefMamba's
    scans), and keeps the CUDA kernel / exact path for the rest (the one-state scans of
    Spatial-Mamba and DAMamba included)."""
    monkeypatch.setattr(selective_scan_module, 'use_triton', lambda x: True)
    u, B3, B4 = torch.zeros(1, 8, 5), torch.zeros(1, 4, 5), torch.zeros(1, 2, 4, 5)
    assert triton_scan_supported(u, B3, B3, None, False)
    assert triton_scan_supported(u, B4, B4, None, False)
    assert not triton_scan_supported(u, B4, B4, u, False)  # a gate z
    assert not triton_scan_supported(u, B4, B4, None, True)  # the last state
    assert not triton_scan_supported(u, torch.zeros(8, 4), B3, None, False)  # constant B
    assert not triton_scan_supported(u, torch.zeros(1, 4, 4, 5), B3, None, False)  # 2 per group
    assert not triton_scan_supported(u, torch.zeros(1, 2, 1, 5), B3, None, False)  # 1 state
    monkeypatch.setenv('MMDEFSCAN_TRITON_SCAN', '0')
    assert not triton_scan_supported(u, B4, B4, None, False)


@pytest.mark.parametrize('name, backbone', [('defmamba', DefMamba), ('spatialmamba', SpatialMamba),
                                            ('damamba', DAMamba)])
def test_backbone_with_the_kernels_matches_official(triton_everywhere, monkeypatch, name,
                                                    backbone):
    """The whole backbone with every LayerNorm, scan merge, deformable sampling and state-fusion
    read-out on the kernels, fp32, against the official outputs and input gradients (the
    tolerances of the backbones' own tests; TF32 off on CUDA: the fixtures are full fp32)."""
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    ref = load_ref(reference_files(name)[0])
    model = backbone(out_indices=ref['out_indices'], **ref['config_kwargs']).to(DEVICE)
    ref = {k: v.to(DEVICE) if torch.is_tensor(v) else
           [t.to(DEVICE) for t in v] if isinstance(v, (list, tuple)) and v and
           torch.is_tensor(v[0]) else v for k, v in ref.items()}
    tol_out = max(1e-4, 10 * ref['official_fp32_rel_err']['out'])
    tol_grad = max(1e-3, 10 * ref['official_fp32_rel_err']['grad'])
    for name in ref['inputs']:
        out_eval, out_train, grad = run_case(model, ref, name, torch.float32)
        assert max(max_rel_err(o, r) for o, r in zip(out_eval, ref[f'out_eval_{name}'])) <= tol_out
        assert max(max_rel_err(o, r) for o, r in zip(out_train, ref[f'out_train_{name}'])) \
            <= tol_out
        assert max_rel_err(grad, ref[f'grad_input_{name}']) <= tol_grad
