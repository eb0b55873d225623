"""init_cfg=Pretrained loads strictly: every bad key is an error that names it."""
import pytest
import torch

from mmdefscan.models.backbones import DefMamba
from mmdefscan.models.checkpoint import CheckpointError

TINY = dict(dims=[16, 32, 48, 64], depths=[1, 1, 1, 1])


def init_from(path, **init):
    model = DefMamba(**TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path), **init))
    model.init_weights()
    return model


def assert_same_weights(a, b):
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(v, w, msg=k)


def test_detector_checkpoint_with_prefix(tmp_path):
    source = DefMamba(**TINY)
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['neck.conv.weight'] = torch.zeros(1)
    torch.save({'meta': {'epoch': 3}, 'state_dict': state}, tmp_path / 'det.pth')
    assert_same_weights(init_from(tmp_path / 'det.pth', prefix='backbone.'), source)


def test_official_classification_layout_loads(tmp_path):
    """'model' entry with classifier head, no output norms (official ImageNet checkpoints)."""
    source = DefMamba(**TINY)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith('outnorm')}
    state['classifier.head.weight'] = torch.zeros(1000, 64)
    state['classifier.norm.weight'] = torch.ones(64)
    torch.save({'model': state, 'epoch': 299, 'max_accuracy': 83.5}, tmp_path / 'cls.pth')
    model = init_from(tmp_path / 'cls.pth')
    for k, v in state.items():
        if not k.startswith('classifier'):
            torch.testing.assert_close(model.state_dict()[k], v)
    assert torch.equal(model.outnorm0.weight, torch.ones(16))


def test_output_norms_follow_out_indices(tmp_path):
    """Norms of stages the backbone does not output are ignored; norms the checkpoint lacks
    entirely keep their init (an mmpretrain classifier has only the last one); half a norm is an
    error."""
    source = DefMamba(**TINY)
    for norm in range(4):
        getattr(source, f'outnorm{norm}').weight.data.fill_(2.0 + norm)
    torch.save(source.state_dict(), tmp_path / 'all.pth')
    last = DefMamba(**TINY, out_indices=(3, ),
                    init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'all.pth')))
    last.init_weights()
    assert torch.equal(last.outnorm3.weight, torch.full((64, ), 5.0))
    classifier = {f'backbone.{k}': v for k, v in source.state_dict().items()
                  if not k.startswith(('outnorm0', 'outnorm1', 'outnorm2'))}
    classifier['head.fc.weight'] = torch.zeros(1000, 64)
    torch.save({'state_dict': classifier}, tmp_path / 'cls.pth')
    model = init_from(tmp_path / 'cls.pth', prefix='backbone.')
    assert torch.equal(model.outnorm3.weight, torch.full((64, ), 5.0))
    assert torch.equal(model.outnorm0.weight, torch.ones(16))
    half = source.state_dict()
    del half['outnorm1.bias']
    torch.save(half, tmp_path / 'half.pth')
    with pytest.raises(CheckpointError, match=r'1 missing: outnorm1\.bias'):
        init_from(tmp_path / 'half.pth')


def test_truncated_file_is_named(tmp_path):
    torch.save(DefMamba(**TINY).state_dict(), tmp_path / 'ok.pth')
    data = (tmp_path / 'ok.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 3])
    with pytest.raises(CheckpointError, match=r'cut\.pth: not a readable checkpoint'):
        init_from(tmp_path / 'cut.pth')


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        init_from(tmp_path / 'nope.pth')


def _drop(state):
    del state['layers.0.blocks.0.op.A_logs']


def _add(state):
    state['layers.9.extra'] = torch.zeros(1)


def _reshape(state):
    state['patch_embed.0.weight'] = torch.zeros(9, 3, 3, 3)


@pytest.mark.parametrize('corrupt, message', [
    (_drop, r'1 missing: layers\.0\.blocks\.0\.op\.A_logs'),
    (_add, r'1 unexpected: layers\.9\.extra'),
    (_reshape, r'1 shape mismatches: patch_embed\.0\.weight \(9, 3, 3, 3\) vs \(8, 3, 3, 3\)'),
])
def test_bad_keys_are_named(tmp_path, corrupt, message):
    state = DefMamba(**TINY).state_dict()
    corrupt(state)
    torch.save(state, tmp_path / 'bad.pth')
    with pytest.raises(CheckpointError, match=message):
        init_from(tmp_path / 'bad.pth')


def test_wrong_variant_is_refused(tmp_path):
    torch.save(DefMamba(dims=[16, 32, 48, 64], depths=[1, 1, 2, 1]).state_dict(), tmp_path / 'x.pth')
    with pytest.raises(CheckpointError, match='missing|unexpected'):
        init_from(tmp_path / 'x.pth')


def test_pickled_objects_are_refused_with_advice(tmp_path):
    import argparse  # official training checkpoints store their config / args objects
    torch.save({'model': DefMamba(**TINY).state_dict(), 'config': argparse.Namespace(lr=1e-3)},
               tmp_path / 'o.pth')
    with pytest.raises(CheckpointError, match='model_converters'):
        init_from(tmp_path / 'o.pth')


def test_official_pretrained_keyword_becomes_strict_init(tmp_path):
    torch.save({'model': DefMamba(**TINY).state_dict()}, tmp_path / 'ok.pth')
    model = DefMamba(**TINY, pretrained=str(tmp_path / 'ok.pth'))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=str(tmp_path / 'ok.pth'))
    model.init_weights()
    with pytest.raises(FileNotFoundError):
        DefMamba(**TINY, pretrained=str(tmp_path / 'missing.pth')).init_weights()
