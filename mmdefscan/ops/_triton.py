"""Optional Triton: the fused kernels of mmdefscan run when Triton is importable and the tensors
are on CUDA; otherwise the exact PyTorch paths run. ``MMDEFSCAN_TRITON=0`` turns the kernels
off (for A/B benchmarks and as an escape hatch). The tests run the kernels on CPU tensors
through Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton is imported) by
calling the ``*_triton`` functions directly; models on CPU always take the PyTorch path."""
import importlib.util
import os

import torch

from .tracing import is_exporting

# the kernels live in mmdefscan/ops/kernels/ and are imported only when used
HAS_TRITON = importlib.util.find_spec('triton') is not None

# Some kernels pay only on large maps in training (LayerNorm, the deformable tokens): their
# callers give ``use_triton`` a size below which autograd-recorded calls take the PyTorch path.
# Eager training is host-bound (docs/cuda_graph.md): a Triton call with its
# backward costs the host about 0.5 ms (launcher, autograd node, the wrapper's allocations), more
# than the few native operators it replaces, while on a small map the kernel time it saves is
# short. Inference keeps the kernels (no backward; kernel-bound at its batch sizes).
# ``MMDEFSCAN_TRITON_MIN_NUMEL=N`` replaces every such size with N (0: all on the kernels; A/B
# benchmarks); read at every call, like ``MMDEFSCAN_TRITON``.


def records_grad(*tensors) -> bool:
    """Whether autograd records a call on these tensors (None entries allowed): the callers'
    rule for kernels that have no backward, or a different one."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def use_triton(x, train_min_numel=0) -> bool:
    """True when x should go through a Triton kernel: a CUDA tensor, Triton present, not off, and
    small enough for the kernels' 32-bit offsets, and not being exported (an exported graph
    holds the PyTorch paths); while autograd records, at least
    ``train_min_numel`` elements."""
    if not (HAS_TRITON and x.is_cuda and x.numel() < 2 ** 31
            and os.environ.get('MMDEFSCAN_TRITON', '1') != '0' and not is_exporting()):
        return False
    if not train_min_numel or not torch.is_grad_enabled():
        return True
    return x.numel() >= min_numel(train_min_numel)


def min_numel(default) -> int:
    """An op's size threshold, or ``MMDEFSCAN_TRITON_MIN_NUMEL`` when set (0: every size)."""
    return int(os.environ.get('MMDEFSCAN_TRITON_MIN_NUMEL', default))
