"""The torch selective scan against a float64 step-by-step recurrence, forward and backward."""
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

from mmdefscan.ops import selective_scan_fn, selective_scan_ref
from mmdefscan.ops.selective_scan import linear_scan


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence written out, one time step at a time (float64)."""
    batch, dim, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = torch.where(delta > 20, delta, torch.log1p(torch.exp(delta)))

    def per_channel(M, t):
        if M.dim() == 2:
            return M.expand(batch, dim, M.shape[1])
        if M.dim() == 3:
            return M[:, None, :, t].expand(batch, dim, M.shape[1])
        g = M.shape[1]
        return M[:, :, :, t].repeat_interleave(dim // g, dim=1)

    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + \
            (delta[:, :, t] * u[:, :, t])[..., None] * per_channel(B, t)
        ys.append((h * per_channel(C, t)).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y, h


def make_inputs(batch=2, dim=6, state=4, length=37, groups=3, bc_form='grouped',
                dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    shapes = {'grouped': (batch, groups, state, length), 'shared': (batch, state, length),
              'static': (dim, state)}
    args = dict(u=r(batch, dim, length), delta=r(batch, dim, length) * 0.5,
                A=-torch.rand(dim, state, generator=g, dtype=dtype) * 3 - 0.1,
                B=r(*shapes[bc_form]), C=r(*shapes[bc_form]), D=r(dim), z=r(batch, dim, length),
                delta_bias=r(dim) * 0.3)
    for v in args.values():
        v.requires_grad_(requires_grad)
    return args


@pytest.mark.parametrize('bc_form', ['grouped', 'shared', 'static'])
@pytest.mark.parametrize('length', [1, 7, 64, 150])
def test_forward_and_backward_equal_naive_recurrence(bc_form, length):
    args = make_inputs(length=length, bc_form=bc_form, requires_grad=True)
    y, last = selective_scan_ref(**args, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = naive_scan(**args, delta_softplus=True)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, last_ref, rtol=1e-12, atol=1e-12)
    weight = torch.randn_like(y)
    grads = torch.autograd.grad((y * weight).sum() + last.sum(), list(args.values()))
    grads_ref = torch.autograd.grad((y_ref * weight).sum() + last_ref.sum(), list(args.values()))
    for name, g, g_ref in zip(args, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10, msg=name)


def test_gradcheck_tiny():
    args = make_inputs(batch=1, dim=3, state=2, length=9, groups=1, requires_grad=True)
    names = list(args)

    def fn(*tensors):
        return selective_scan_ref(**dict(zip(names, tensors)), delta_softplus=True)

    assert torch.autograd.gradcheck(fn, tuple(args.values()), eps=1e-6, atol=1e-7)


def test_chunk_size_does_not_change_result():
    log_a = -torch.rand(3, 5, 101, dtype=torch.float64) * 4
    b = torch.randn(3, 5, 101, dtype=torch.float64)
    ref = linear_scan(log_a, b, chunk=1)
    for chunk in (2, 8, 11, 101, 200):
        torch.testing.assert_close(linear_scan(log_a, b, chunk=chunk), ref, rtol=1e-12, atol=1e-12)


def test_strong_decay_stays_finite():
    """Huge delta * |A| over long sequences: no overflow (decays are exp of sums <= 0)."""
    args = make_inputs(length=500, dtype=torch.float32)
    args['delta'] = args['delta'] * 0 + 30.0  # softplus identity branch, exp(-90..) underflows
    y = selective_scan_ref(**args, delta_softplus=True)
    assert torch.isfinite(y).all()
    y_ref, _ = naive_scan(**{k: v.double() for k, v in args.items()}, delta_softplus=True)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)


def test_float32_matches_float64():
    args = make_inputs(length=300)
    y64 = selective_scan_ref(**args, delta_softplus=True)
    y32 = selective_scan_ref(**{k: v.float() for k, v in args.items()}, delta_softplus=True)
    assert y32.dtype == torch.float32
    assert float((y32.double() - y64).abs().max() / y64.abs().max()) < 1e-5


def test_autocast_computes_fp32_and_returns_input_dtype():
    args = make_inputs(length=50, dtype=torch.float32)
    ref = selective_scan_fn(**args, delta_softplus=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = {k: (v.bfloat16() if k in ('u', 'delta', 'B', 'C', 'z') else v) for k, v in args.items()}
        y = selective_scan_fn(**low, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    exact = selective_scan_ref(**{k: v.float() for k, v in low.items()}, delta_softplus=True)
    torch.testing.assert_close(y.float(), exact, rtol=1e-2, atol=1e-2)  # only the output rounding
    assert float((y.float() - ref).abs().max() / ref.abs().max()) < 0.05


def test_cpu_function_uses_torch_path_without_warning(recwarn):
    args = make_inputs(length=20, dtype=torch.float32)
    torch.testing.assert_close(selective_scan_fn(**args), selective_scan_ref(**args))
    assert not [w for w in recwarn if 'selective_scan_cuda' in str(w.message)]


class _KernelOnTorch:
    """Stands in for mamba-ssm's ``selective_scan_cuda`` (same fwd/bwd contract) on the CPU, so
    the custom-op wiring of the CUDA path (dtypes, optional outputs, autograd) is tested here."""

    @staticmethod
    def fwd(u, delta, A, B, C, D, z, delta_bias, softplus):
        y, last = selective_scan_ref(u, delta, A, B, C, D, None, delta_bias, softplus,
                                     return_last_state=True)
        x = torch.zeros(*last.shape[:2], 1, 2 * last.shape[2])
        x[..., -1, 1::2] = last
        outs = [y.to(u.dtype), x]
        if z is not None:
            outs.append((y * F.silu(z.float())).to(u.dtype))
        return outs

    @staticmethod
    def bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, softplus, recompute):
        assert (out is None) == (z is None), 'out is kept alive only for the gate'
        inputs = [t.detach().float().requires_grad_() if t is not None else None
                  for t in (u, delta, A, B, C, D, z, delta_bias)]
        wanted = [t for t in inputs if t is not None]

        def vjp():
            y = selective_scan_ref(*inputs[:6], inputs[6], inputs[7], softplus)
            return torch.autograd.grad(y, wanted, dout.float())
        # a custom op's body runs below the autograd dispatch key: differentiate on a fresh thread
        with ThreadPoolExecutor(1) as pool:
            grads = iter(pool.submit(vjp).result())
        g = [next(grads) if t is not None else None for t in inputs]
        cast = [g[0].to(u.dtype), g[1].to(u.dtype), g[2], g[3].to(B.dtype), g[4].to(C.dtype),
                g[5], g[7]]
        return cast + ([g[6].to(z.dtype)] if z is not None else [])


@pytest.mark.parametrize('with_z', [False, True])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cuda_path_custom_ops_wire_kernel_like_reference(monkeypatch, with_z, dtype):
    from mmdefscan.ops import selective_scan as module
    monkeypatch.setattr(module, '_KERNEL', _KernelOnTorch)
    g = torch.Generator().manual_seed(3)
    b, groups, dim, n, length = 2, 2, 8, 4, 40
    fp = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    args = dict(u=fp(b, dim, length).to(dtype), delta=(fp(b, dim, length) * 0.5).to(dtype),
                A=-torch.rand(dim, n, generator=g) - 0.1, B=fp(b, groups, n, length).to(dtype),
                C=fp(b, groups, n, length).to(dtype), D=fp(dim),
                z=fp(b, dim, length).to(dtype) if with_z else None, delta_bias=fp(dim) * 0.3)
    leaves = {k: v.requires_grad_() for k, v in args.items() if v is not None}
    y, last = module._selective_scan_cuda(**args, delta_softplus=True, return_last_state=True)
    assert y.dtype == dtype  # low-precision activations go through unconverted
    y_ref, last_ref = selective_scan_ref(**args, delta_softplus=True, return_last_state=True)
    w = torch.randn(y.shape, generator=g)
    grads = torch.autograd.grad((y.float() * w).sum(), list(leaves.values()))
    grads_ref = torch.autograd.grad((y_ref.float() * w).sum(), list(leaves.values()))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(last, last_ref, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(leaves, grads, grads_ref):
        assert got.dtype == want.dtype, name
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol, msg=name)
