"""After ``import mmdefscan``, torch's default (``weights_only``) loading reads the checkpoints
MMEngine's Runner writes, and nothing else becomes loadable: other Python objects and
``getattr`` on anything but HistoryBuffer's public methods are still refused."""
import argparse
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

import mmdefscan  # noqa: F401  (adds MMEngine's data types to torch's allow-list)


def runner_like_checkpoint():
    """The structure of ``Runner.save_checkpoint``: meta, weights, message hub (HistoryBuffers of
    numpy arrays, numpy scalars in the runtime info), optimizer and scheduler states."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=5)
    hub = MessageHub.get_instance('mmdefscan-safe-load-test')
    for step in range(3):
        loss = model(torch.randn(5, 3)).square().mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        hub.update_scalar('train/loss', loss.item())
        hub.update_scalar('train/lr', np.float64(scheduler.get_last_lr()[0]))
    hub.update_info('iter', 3)
    hub.update_info('best_score', np.float32(0.25))
    hub.update_info('confusion', np.eye(2))
    meta = dict(epoch=1, iter=3, cfg="model = dict(type='X')\n", seed=0, experiment_name='exp',
                time='20250101_000000', mmengine_version='0.10.7',
                dataset_meta=dict(classes=('a', 'b'), palette=[(0, 0, 0), (255, 0, 0)]))
    return {'meta': meta, 'state_dict': model.state_dict(), 'message_hub': hub.state_dict(),
            'optimizer': optimizer.state_dict(), 'param_schedulers': [scheduler.state_dict()]}


def test_runner_checkpoint_loads_with_torch_defaults(tmp_path):
    checkpoint = runner_like_checkpoint()
    buffers = checkpoint['message_hub']['log_scalars']
    assert isinstance(buffers['train/loss'], HistoryBuffer)  # what weights_only used to refuse
    torch.save(checkpoint, tmp_path / 'iter_3.pth')
    loaded = torch.load(tmp_path / 'iter_3.pth')  # torch >= 2.6: weights_only=True by default
    hub = MessageHub.get_instance('mmdefscan-safe-load-restored')
    hub.load_state_dict(loaded['message_hub'])
    assert hub.get_scalar('train/loss').current() == buffers['train/loss'].current()
    assert hub.get_scalar('train/loss').mean() == pytest.approx(buffers['train/loss'].mean())
    assert hub.get_info('best_score') == np.float32(0.25)
    np.testing.assert_array_equal(hub.get_info('confusion'), np.eye(2))
    assert loaded['meta'] == checkpoint['meta']
    for k, v in checkpoint['state_dict'].items():
        assert torch.equal(loaded['state_dict'][k], v)
    assert loaded['optimizer']['state'][0]['step'] == checkpoint['optimizer']['state'][0]['step']


def test_loading_stays_weights_only(tmp_path):
    """No global switch to unsafe loading: other Python objects are still refused."""
    torch.save({'state_dict': {}, 'args': argparse.Namespace(lr=1.0)}, tmp_path / 'args.pth')
    with pytest.raises(pickle.UnpicklingError, match='argparse.Namespace'):
        torch.load(tmp_path / 'args.pth')


class _GetattrOf:
    """Pickles as ``getattr(obj, name)``, the form HistoryBuffer's statistics methods take."""

    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)


@pytest.mark.parametrize('obj, name', [
    (OrderedDict, 'fromkeys'),      # a method of another allow-listed class
    (np.ndarray, 'tofile'),         # numpy's, which writes files
    (HistoryBuffer, '__init__'),    # HistoryBuffer's private attributes
    (HistoryBuffer, '_statistics_methods'),
])
def test_getattr_on_other_objects_is_refused(tmp_path, obj, name):
    torch.save({'message_hub': {'x': _GetattrOf(obj, name)}}, tmp_path / 'evil.pth')
    with pytest.raises(pickle.UnpicklingError, match=rf'refusing getattr\(.*{name}'):
        torch.load(tmp_path / 'evil.pth')


def test_getattr_of_history_buffer_statistics_still_loads(tmp_path):
    torch.save({'method': _GetattrOf(HistoryBuffer, 'mean')}, tmp_path / 'ok.pth')
    assert torch.load(tmp_path / 'ok.pth')['method'] is HistoryBuffer.mean
