"""What every backbone family promises a detector or segmentor, checked on a tiny model of each:
any input size, frozen stages, activation checkpointing, drop path, out_indices, a clear error
for a wrong input. (Equality with the official code is in test_<family>.py.)"""
import pytest
import torch

from mmdefscan.models.backbones import DAMamba, DefMamba, SpatialMamba

# Each family: its class, a tiny configuration, its stem, what stage i is made of (the stage,
# then its output norm), whether it has BatchNorms, and options for the size and checkpointing
# tests (DAMamba's layer scales sit inside the recomputed blocks).
FAMILIES = {
    'defmamba': dict(
        cls=DefMamba, tiny=dict(dims=[16, 32, 48, 64], depths=[1, 2, 1, 1]),
        stem=lambda m: m.patch_embed,
        stage=lambda m, i: [m.layers[i], getattr(m, f'outnorm{i}')],
        batch_norm=False, options={}),
    'spatialmamba': dict(
        cls=SpatialMamba, tiny=dict(dims=8, depths=[1, 2, 1, 1]),
        stem=lambda m: m.patch_embed,
        stage=lambda m, i: [m.layers[i], getattr(m, f'outnorm{i}')],
        batch_norm=True, options={}),
    'damamba': dict(
        cls=DAMamba,
        tiny=dict(depths=[1, 2, 1, 1], dims=[16, 32, 48, 64], mlp_ratios=[4, 4, 3, 3], head_dim=16),
        stem=lambda m: m.stem,
        stage=lambda m, i: [m.stages[i], getattr(m, f'norm{i + 1}')],
        batch_norm=True, options=dict(layerscale=[False, False, True, True])),
}


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return FAMILIES[request.param]


def tiny(family, **kwargs):
    return family['cls'](**{**family['tiny'], **kwargs})


def expected_shape(batch, model, i, size):
    stride = 2 ** (i + 2)
    return (batch, model.dims[i], -(-size[0] // stride), -(-size[1] // stride))


@pytest.mark.parametrize('size', [(32, 32), (64, 32), (33, 47), (40, 72), (97, 65)])
def test_any_size_gives_finite_outputs_and_gradients(family, size):
    """Sides <= 32 make 1-pixel last stages (where the official DefMamba divides by zero):
    training (batch 2: BatchNorm needs two values per channel), then eval."""
    model = tiny(family, depths=[1, 1, 1, 1], **family['options'])
    model.train()
    x = torch.randn(2, 3, *size, requires_grad=True)
    outs = model(x)
    for i, o in enumerate(outs):
        assert o.shape == expected_shape(2, model, i, size) and torch.isfinite(o).all()
    sum(o.square().sum() for o in outs).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        outs = model(x[:1])
    for i, o in enumerate(outs):
        assert o.shape == expected_shape(1, model, i, size) and torch.isfinite(o).all()


def test_frozen_stages_freeze_stem_and_first_stages(family):
    model = tiny(family, frozen_stages=2)
    model.train()
    frozen = [family['stem'](model), *family['stage'](model, 0), *family['stage'](model, 1)]
    for m in frozen:
        assert not m.training and all(not p.requires_grad for p in m.parameters())
    for m in family['stage'](model, 2):
        assert m.training
        # DAMamba's conv_constant taps are frozen in every stage
        assert all(p.requires_grad for n, p in m.named_parameters()
                   if not n.endswith('conv_constant'))
    # frozen BatchNorms keep their statistics
    buffers = {(i, n): b.clone() for i, m in enumerate(frozen) for n, b in m.named_buffers()}
    assert any(n.endswith('running_mean') for _, n in buffers) == family['batch_norm']
    model(torch.randn(2, 3, 64, 64))
    for (i, n), b in buffers.items():
        assert torch.equal(dict(frozen[i].named_buffers())[n], b), n


def test_with_cp_gives_same_outputs_gradients_and_running_stats(family):
    torch.manual_seed(0)
    plain = tiny(family, drop_path_rate=0.3, **family['options'])
    checkpointed = tiny(family, drop_path_rate=0.3, with_cp=True, **family['options'])
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    # random weights: a plain sum of LayerNorm outputs has an (almost) zero gradient
    weights = [torch.randn(expected_shape(2, plain, i, (64, 64))) for i in range(4)]
    results = []
    for model in (plain, checkpointed):
        model.train()
        torch.manual_seed(1)  # same drop-path draws; checkpointing must replay them
        outs = model(x)
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        results.append((outs, [p.grad for p in model.parameters()], model.state_dict()))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b)
    for a, b in zip(results[0][1], results[1][1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the recomputation does not move BatchNorm statistics a second time
    for k, v in results[0][2].items():
        torch.testing.assert_close(results[1][2][k], v, rtol=0, atol=0, msg=k)


def test_drop_path_is_active_only_in_training(family):
    model = tiny(family, drop_path_rate=0.5)
    x = torch.randn(4, 3, 64, 64)
    model.train()
    assert not torch.equal(model(x)[-1], model(x)[-1])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[-1], model(x)[-1])


def test_out_indices_select_stages(family):
    """The selected stages are those of the full model, exactly; the channels-last families
    build no output norm for an unselected stage."""
    model = tiny(family, out_indices=(1, 3)).eval()
    full = tiny(family).eval()
    missing, unexpected = full.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected
    if hasattr(full, 'outnorm0'):
        assert not hasattr(model, 'outnorm0') and not hasattr(model, 'outnorm2')
        assert sorted({k.split('.')[0] for k in missing}) == ['outnorm0', 'outnorm2']
    else:
        assert not missing
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs, all_outs = model(x), full(x)
    assert [o.shape[1] for o in outs] == [model.dims[1], model.dims[3]] and len(all_outs) == 4
    torch.testing.assert_close(outs[0], all_outs[1], rtol=0, atol=0)
    torch.testing.assert_close(outs[1], all_outs[3], rtol=0, atol=0)


def test_bad_input_is_a_clear_error(family):
    with pytest.raises(ValueError, match=r'expects \(B, 3, H, W\)'):
        tiny(family)(torch.randn(1, 4, 64, 64))
