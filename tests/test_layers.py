"""Shared layers: the MLP's GELU + fc2 keep one hidden map for the backward, gradients exact."""
import pytest
import torch
import torch.nn.functional as F

from mmdefscan.models.layers import Mlp


def saved_activation_bytes(fn, x, params):
    """Bytes of the non-parameter tensors autograd keeps for the backward of fn(x)."""
    param_ptrs = {p.data_ptr() for p in params}
    storages = {}

    def pack(t):
        if t.data_ptr() not in param_ptrs:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    return out, sum(storages.values())


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
