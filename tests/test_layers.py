"""Shared layers: the MLP's GELU + fc2 keep one hidden map for the backward, gradients exact;
the one-operator residual with drop path equals the two steps."""
import pytest
import torch
import torch.nn.functional as F

from _refs import saved_bytes
from mmdefscan.models.layers import DropPath, Mlp


def saved_activation_bytes(fn, x, params):
    """(fn(x), bytes of the non-parameter tensors autograd keeps for its backward)."""
    param_ptrs = {p.data_ptr() for p in params}
    return saved_bytes(lambda: fn(x), lambda t: t.data_ptr() not in param_ptrs)


@pytest.mark.parametrize('dtype, autocast', [(torch.float64, False), (torch.float32, False),
                                             (torch.float32, True)])
def test_mlp_keeps_one_hidden_map_and_matches_the_plain_composition(dtype, autocast):
    torch.manual_seed(0)
    mlp = Mlp(8, 32).to(dtype)
    x = torch.randn(2, 5, 6, 8, dtype=dtype, requires_grad=True)
    params = list(mlp.parameters())

    def plain(inp):
        return mlp.fc2(F.gelu(mlp.fc1(inp)))

    results = {}
    for name, fn in (('fused', mlp), ('plain', plain)):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            out, saved = saved_activation_bytes(fn, x, params)
        weights = torch.linspace(-1, 1, out.numel()).view_as(out)
        grads = torch.autograd.grad((out.float() * weights).sum(), [x] + params)
        results[name] = out, grads, saved
    (out, grads, saved), (ref_out, ref_grads, ref_saved) = results['fused'], results['plain']
    assert out.dtype == ref_out.dtype and torch.equal(out, ref_out)
    for grad, ref in zip(grads, ref_grads):
        assert grad.dtype == ref.dtype and torch.equal(grad, ref)
    hidden_map = 2 * 5 * 6 * 32 * (2 if autocast else dtype.itemsize)
    fc2_weight_cast = 32 * 8 * 2 if autocast else 0  # autograd keeps fc2's bf16 weight copy too
    assert saved == ref_saved - hidden_map - fc2_weight_cast


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
def test_drop_path_residual_equals_the_two_steps(dtype):
    """x + DropPath(y) with y in ``dtype`` on an fp32 residual (as under autocast): the same
    random samples dropped and the kept ones scaled by 1 / keep, like the two steps, whose
    product y * (mask / keep) rounds to y's dtype where the fused sum keeps the residual's
    precision; the same gradients; a plain sum in eval and at rate 0."""
    drop = DropPath(0.4).train()
    x = torch.randn(64, 5, 3, requires_grad=True)
    y = torch.randn(64, 5, 3, dtype=dtype, requires_grad=True)
    torch.manual_seed(1)
    mask = y.new_empty(64, 1, 1).bernoulli_(0.6)  # what DropPath draws after this seed
    reference = x.double() + y.double() * mask.double() / 0.6
    results = []
    for step in (drop.residual, lambda x, y: x + drop(y)):
        torch.manual_seed(1)
        out = step(x, y)
        out.backward(torch.ones_like(out))
        results.append((out, x.grad, y.grad))
        x.grad = y.grad = None
    (fused, *fused_grads), (plain, *plain_grads) = results
    assert fused.dtype == plain.dtype == torch.promote_types(dtype, torch.float32)
    torch.testing.assert_close(fused, reference.to(fused.dtype))
    # bf16: the two steps round y * (mask / keep) to bf16, an error under 2^-7 of 2 max|y|
    bf16_rounding = dict(rtol=0, atol=2 ** -7 * 2 * float(y.detach().abs().max()))
    low = bf16_rounding if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(plain, reference.to(plain.dtype), **low)
    torch.testing.assert_close(fused_grads, plain_grads)
    assert 10 < int((mask == 0).sum()) < 54  # about 40% of the 64 samples dropped
    for module in (drop.eval(), DropPath(0.0).train()):
        assert torch.equal(module.residual(x, y), x + y)
