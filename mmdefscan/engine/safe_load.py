"""Let torch's safe ``weights_only`` loading read the checkpoints MMEngine writes.

torch >= 2.6 loads with ``weights_only=True`` by default; MMEngine 0.10.7 calls ``torch.load``
without the argument, so its own checkpoints (message hub with ``HistoryBuffer`` objects holding
numpy arrays) fail to load or resume. Instead of turning safety off, the few plain data types
those checkpoints contain are added to torch's allow-list. ``HistoryBuffer`` pickles its
statistics methods as ``getattr(HistoryBuffer, 'mean')``; a general ``getattr`` would let a
malicious file reach any attribute, so the pickled name is bound to a getattr that only returns
HistoryBuffer's own methods.
"""
import pickle

import numpy as np
import torch


def _numpy_globals():
    found = [np.ndarray, np.dtype]
    multiarray = getattr(np, '_core', None) or np.core
    found.append(multiarray.multiarray._reconstruct)
    found.append(multiarray.multiarray.scalar)
    found += [type(np.dtype(name)) for name in ('float64', 'float32', 'float16', 'int64',
                                                 'int32', 'int8', 'uint8', 'bool')]
    return found


def _history_buffer_getattr(obj, name):
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and callable(getattr(HistoryBuffer, name, None)) \
            and not name.startswith('_'):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'refusing getattr({obj!r}, {name!r}) in a checkpoint')


def allow_mmengine_checkpoints():
    """Add MMEngine's HistoryBuffer and numpy's array/scalar reconstruction to the allow-list."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:  # torch < 2.4: weights_only is off by default anyway
        return
    from mmengine.logging import HistoryBuffer
    add([HistoryBuffer, *_numpy_globals(), (_history_buffer_getattr, 'builtins.getattr')])
