"""Parameters and FLOPs of mmdefscan models with MMEngine's counter, the selective scan included.

MMEngine's ``get_model_complexity_info`` (fvcore's jit-trace counter: one multiply-add = one
FLOP) counts convolutions, linear layers, matmul / einsum, norms, interpolation and
``grid_sample``; the selective scan is a recurrence of element-wise operations, which it skips.
Inside :func:`count_selective_scans` every scan call runs as one traced operator whose FLOPs come
from VMamba's formula, the convention of the Mamba vision papers (``flops_selective_scan_fn``,
per call on u of shape (B, D, L) with state size N):

    9 * B * L * D * N  (+ B * D * L with the D skip term, + B * D * L with the z gate)

Spatial-Mamba's and DAMamba's state scans are counted the same way with N = 1 and no D term (the
official "rh" kernel returns the states; their C * h + D * u read-out is element-wise, uncounted).
DefMamba's own counter (``flops_selective_scan_ref`` in its ``classification/models/utils.py``,
numpy einsum-path counts halved) gives about 3.5 B L D N + B D L instead; its published FLOPs
match that convention (:func:`selective_scan_flops_ref`).
"""
import contextlib
import logging
import re

import torch

SCAN_OP = 'prim::PythonOp.SelectiveScanFlops'


def selective_scan_flops(batch, dim, length, n_state, with_d=True, with_z=False):
    """VMamba's ``flops_selective_scan_fn``: 9 B L D N, plus B D L each for D and z."""
    flops = 9 * batch * length * dim * n_state
    if with_d:
        flops += batch * dim * length
    if with_z:
        flops += batch * dim * length
    return flops


def selective_scan_flops_ref(batch, dim, length, n_state, with_d=True, with_z=False):
    """DefMamba's ``flops_selective_scan_ref`` in closed form: the einsums ``bdl,dn->bdln``
    (B D L N / 2) and ``bdl,bnl,bdl->bdln`` (B D L N), L steps of B D N + ``bdn,bdn->bd``
    (2 B D N), plus B D L each for D and z."""
    flops = batch * dim * length * n_state * 7 // 2
    if with_d:
        flops += batch * dim * length
    if with_z:
        flops += batch * dim * length
    return flops


class SelectiveScanFlops(torch.autograd.Function):
    """The selective scan as a single traced operator (forward only, for counting).

    Tensor arguments at fixed positions (an empty tensor for an absent D, z or delta bias) so
    that the FLOP handle can read the shapes from the traced node."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, scan, delta_softplus,
                return_last_state):
        def given(t):
            return None if t.numel() == 0 else t
        return scan(u, delta, A, B, C, given(D), given(z), given(delta_bias), delta_softplus,
                    return_last_state)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError('SelectiveScanFlops only counts; it has no backward')


def _scan_flop_handle(calls):
    def handle(inputs, outputs):
        batch, dim, length = inputs[0].type().sizes()
        n_state = inputs[2].type().sizes()[1]
        with_d = inputs[5].type().sizes() != [0]
        with_z = inputs[6].type().sizes() != [0]
        calls.append(dict(batch=batch, dim=dim, length=length, n_state=n_state, with_d=with_d,
                          with_z=with_z))
        return selective_scan_flops(batch, dim, length, n_state, with_d, with_z)
    return handle


@contextlib.contextmanager
def count_selective_scans():
    """Route every selective scan through :class:`SelectiveScanFlops` and register its FLOP
    handle with MMEngine's counter. Yields a list that receives the shapes of every counted scan
    call (``selective_scan_flops(**call)`` is its count)."""
    from mmengine.analysis import complexity_analysis

    from ..ops import selective_scan as module

    calls = []
    originals = {'selective_scan_ref': module.selective_scan_ref,
                 '_selective_scan_cuda': module._selective_scan_cuda}

    def routed(scan):
        def call(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                 return_last_state=False):
            empty = u.new_empty(0)
            return SelectiveScanFlops.apply(
                u, delta, A, B, C, empty if D is None else D, empty if z is None else z,
                empty if delta_bias is None else delta_bias, scan, delta_softplus,
                return_last_state)
        return call

    handles = complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS
    try:
        for name, scan in originals.items():
            setattr(module, name, routed(scan))
        handles[SCAN_OP] = _scan_flop_handle(calls)
        yield calls
    finally:
        for name, scan in originals.items():
            setattr(module, name, scan)
        handles.pop(SCAN_OP, None)


class _UnsupportedOps(logging.Filter):
    """Collects MMEngine's 'Unsupported operator X encountered N time(s)' warnings (and keeps
    them and the 'never called' notes off the console)."""

    pattern = re.compile(r'Unsupported operator (\S+) encountered (\d+) time')

    def __init__(self):
        super().__init__()
        self.ops = {}

    def filter(self, record):
        message = record.getMessage()
        found = self.pattern.search(message)
        if found:
            self.ops.setdefault(found.group(1), int(found.group(2)))  # first: the FLOP counter
            return False
        return 'never called during the trace' not in message


def model_complexity(model, inputs):
    """FLOPs and parameters of ``model(*inputs)`` (``model`` in eval mode).

    Returns a dict: ``flops`` (total), ``scan_flops`` (of which selective scans), ``scan_calls``
    (their shapes), ``params``, ``uncounted`` ({op: calls} of traced operators without a FLOP
    handle).
    """
    from mmengine.analysis import get_model_complexity_info
    from mmengine.analysis.complexity_analysis import _DEFAULT_SUPPORTED_FLOP_OPS
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    unsupported = _UnsupportedOps()
    logger.addFilter(unsupported)
    try:
        with count_selective_scans() as calls, torch.no_grad():
            info = get_model_complexity_info(model, inputs=inputs, show_table=False,
                                             show_arch=False)
            counted = set(_DEFAULT_SUPPORTED_FLOP_OPS)
    finally:
        logger.removeFilter(unsupported)
    uncounted = {op: n for op, n in unsupported.ops.items() if op not in counted}
    scan = sum(selective_scan_flops(**call) for call in calls)
    return dict(flops=info['flops'], scan_flops=scan, scan_calls=calls, params=info['params'],
                uncounted=uncounted)
