"""What the operators do differently while a tracer records them (``torch.export``,
``torch.onnx.export(dynamo=True)``, ``torch.compile``).

A tracer runs the model's Python once on symbolic tensors (FakeTensors, sizes possibly symbols)
and keeps the operators it saw. Three habits of the eager code do not survive that:

* per-size caches of constant grids (:func:`size_cache`): a cache keyed on a symbolic size
  cannot be looked up, and one filled while tracing keeps the tracer's FakeTensors for later
  eager calls of the same size. While tracing the grids are computed in the graph instead;
* ``torch.linspace`` whose ends depend on a size turns that size into a constant in an export
  (:func:`linspace`: the same numbers from ``arange``);
* ``argsort(stable=True)`` has no ONNX translation (:func:`stable_argsort`: an ascending
  ``topk`` over all keys, which ONNX's TopK returns with ties in index order).

The eager paths are untouched: every function below returns what the eager code computed before.
"""
import functools

import torch


def is_tracing() -> bool:
    """True while torch.compile, torch.export or the ONNX exporter trace the model."""
    return torch.compiler.is_compiling()


def is_exporting() -> bool:
    """True while ``torch.export`` (the ONNX exporter included) traces the model."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def size_max(a, b):
    """The larger of two sizes: ``torch.sym_max`` where one is symbolic (export), else Python's
    ``max`` (ints, and the 0-d tensors that sizes are under ``torch.jit.trace``, which MMEngine's
    FLOP counter runs; ``torch.sym_max`` refuses those)."""
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return torch.sym_max(a, b)
    return max(a, b)


def size_cache(maxsize):
    """``functools.lru_cache(maxsize)`` for functions of a map size that build constant tensors,
    bypassed while tracing (see the module docstring); ``.cache_clear`` and ``.cache_info`` as
    lru_cache's."""
    def decorate(fn):
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if is_tracing():
                return fn(*args, **kwargs)
            return cached(*args, **kwargs)
        call.cache_clear, call.cache_info = cached.cache_clear, cached.cache_info
        return call
    return decorate


def linspace(start, end, steps, dtype, device):
    """``torch.linspace(start, end, steps)``; while exporting, the same formula from ``arange``
    (first half ``start + i * step``, second half ``end - (steps - 1 - i) * step``, ``step =
    (end - start) / (steps - 1)`` in ``dtype``, as PyTorch's CPU kernel), so that ``steps`` and
    the ends stay symbolic."""
    if not is_exporting():
        return torch.linspace(start, end, steps, dtype=dtype, device=device)
    index = torch.arange(steps, dtype=dtype, device=device)
    step = torch.full((), end - start, dtype=dtype, device=device) / torch.sym_max(steps - 1, 1)
    # one step gives [start]: the first half is then the whole range
    first_half = index < torch.sym_max(steps // 2, 1)
    return torch.where(first_half, start + step * index, end - step * (steps - 1 - index))


def stable_argsort(keys):
    """``argsort(keys, dim=-1, stable=True)``; while exporting an ascending ``topk`` over the
    whole last axis (ONNX TopK: equal keys in index order, so the same order)."""
    if not is_exporting():
        return torch.argsort(keys, dim=-1, stable=True)
    return torch.topk(keys, keys.shape[-1], dim=-1, largest=False, sorted=True).indices
