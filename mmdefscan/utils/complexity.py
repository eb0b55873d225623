"""Parameters and FLOPs of mmdefscan models with MMEngine's counter, the selective scan included.

MMEngine's ``FlopAnalyzer`` (fvcore's jit-trace counter behind ``get_model_complexity_info``:
one multiply-add = one FLOP) counts convolutions, linear layers, matmul / einsum, norms,
interpolation and ``grid_sample``; the selective scan is a recurrence of element-wise
operations, which it skips. Inside :func:`count_selective_scans` every scan call runs as one
traced operator whose FLOPs come from VMamba's formula, the convention of the Mamba vision papers
(``flops_selective_scan_fn``, per call on u of shape (B, D, L) with state size N):

    9 * B * L * D * N  (+ B * D * L with the D skip term, + B * D * L with the z gate)

Spatial-Mamba's and DAMamba's state scans are counted the same way with N = 1 and no D term (the
official "rh" kernel returns the states; their C * h + D * u read-out is element-wise, uncounted).
DefMamba's own counter (``flops_selective_scan_ref`` in its ``classification/models/utils.py``,
numpy einsum-path counts halved) gives about 3.5 B L D N + B D L instead; its published FLOPs
match that convention (:func:`selective_scan_flops_ref`). Spatial-Mamba's published FLOPs count
its state fusion as the three dilated 3x3 convolutions of training, which is how it is counted
here; evaluation's equivalent 11x11 kernel costs more (``fused_fusion_extra``).

The tracer sees an autograd Function as one opaque operator (``prim::PythonOp.<name>``), so the
models compute plainly under a trace (e.g. :class:`~mmdefscan.models.layers.Mlp`), the Triton
kernels are switched off while counting, and every such operator the counter meets is listed in
``uncounted``: tests/test_get_flops.py pins that list.
"""
import contextlib
import os

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
        # untraced inside: the scan's own autograd Function would show as a second operator
        tracing = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return scan(u, delta, A, B, C, given(D), given(z), given(delta_bias), delta_softplus,
                        return_last_state)
        finally:
            torch._C._set_tracing_state(tracing)

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
    """Route every selective scan through :class:`SelectiveScanFlops`. Yields the FLOP handle
    of its traced operator (:data:`SCAN_OP`, for ``FlopAnalyzer.set_op_handle``) and a list
    that receives the shapes of every counted scan call (``selective_scan_flops(**call)`` is
    its count)."""
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

    try:
        for name, scan in originals.items():
            setattr(module, name, routed(scan))
        yield _scan_flop_handle(calls), calls
    finally:
        for name, scan in originals.items():
            setattr(module, name, scan)


@contextlib.contextmanager
def _dilated_state_fusion(model):
    """Spatial-Mamba's state fusions as the three dilated 3x3 convolutions of training (27
    multiply-adds per state element, the papers' count) instead of evaluation's one 11x11
    kernel (121). Yields a list that receives, per fusion call, the multiply-adds the 11x11
    kernel adds (its taps less the dilated ones, times the state elements)."""
    from ..ops.state_fusion import StateFusion

    fusions = [m for m in model.modules() if isinstance(m, StateFusion)]
    extra = []

    def record(module, args):
        taps = (2 * max(module.dilations) + 1) ** 2 - 9 * len(module.dilations)
        extra.append(taps * args[0].numel())

    modes = [m.training for m in fusions]
    hooks = [m.register_forward_pre_hook(record) for m in fusions]
    try:
        for m in fusions:
            m.training = True
        yield extra
    finally:
        for m, mode, hook in zip(fusions, modes, hooks):
            m.training = mode
            hook.remove()


@contextlib.contextmanager
def _pytorch_paths():
    """The PyTorch reference paths, also for a model on CUDA: the Triton kernels are autograd
    Functions, opaque to the tracer (``MMDEFSCAN_TRITON=0``)."""
    saved = os.environ.get('MMDEFSCAN_TRITON')
    os.environ['MMDEFSCAN_TRITON'] = '0'
    try:
        yield
    finally:
        if saved is None:
            del os.environ['MMDEFSCAN_TRITON']
        else:
            os.environ['MMDEFSCAN_TRITON'] = saved


def model_complexity(model, inputs):
    """FLOPs and parameters of ``model(*inputs)`` (``model`` in eval mode), traced once.

    Returns a dict: ``flops`` (total), ``scan_flops`` (of which selective scans), ``scan_calls``
    (their shapes), ``params``, ``by_module`` ({module name: FLOPs}), ``uncounted`` ({op: calls}
    of traced operators without a FLOP handle) and ``fused_fusion_extra`` (what evaluation's
    11x11 state-fusion kernel adds to ``flops``; 0 without Spatial-Mamba state fusion).
    """
    from mmengine.analysis import FlopAnalyzer, parameter_count

    with count_selective_scans() as (handle, calls), _dilated_state_fusion(model) as extra, \
            _pytorch_paths(), torch.no_grad():
        analyzer = FlopAnalyzer(model, inputs).set_op_handle(SCAN_OP, handle)
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analyzer.tracer_warnings('none')
        flops = analyzer.total()
        by_module = dict(analyzer.by_module())
        uncounted = dict(analyzer.unsupported_ops())
    return dict(flops=flops, scan_flops=sum(selective_scan_flops(**call) for call in calls),
                scan_calls=calls, params=parameter_count(model)[''], by_module=by_module,
                uncounted=uncounted, fused_fusion_extra=sum(extra))
