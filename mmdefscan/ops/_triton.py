"""Optional Triton: the fused kernels of mmdefscan run when Triton is importable and the tensors
are on CUDA; otherwise the exact PyTorch paths run. ``MMDEFSCAN_TRITON=0`` turns the kernels
off (for A/B benchmarks and as an escape hatch). The tests run the kernels on CPU tensors
through Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton is imported) by
calling the ``*_triton`` functions directly; models on CPU always take the PyTorch path."""
import importlib.util
import os

import torch

# the kernels live in mmdefscan/ops/kernels/ and are imported only when used
HAS_TRITON = importlib.util.find_spec('triton') is not None

# Ops whose Triton backward costs the host more than PyTorch's (LayerNorm, the deformable
# tokens) take the PyTorch path for training on maps of fewer elements than this. Eager training
# is host-bound (docs/performance.md, rounds 4-6): there a Triton call costs the host 150-350 us
# (launcher, autograd node, the wrapper's allocations), more than the few native operators it
# replaces, while on a small map the kernel time it saves is short. Inference keeps the kernels
# (no backward, and kernel-bound at its batch sizes). ``MMDEFSCAN_TRITON_MIN_NUMEL=0`` sends
# every size to the kernels (A/B benchmarks); read at every call, like ``MMDEFSCAN_TRITON``.
LARGE_MAP_NUMEL = 2 ** 23


def use_triton(x, large_map_only=False) -> bool:
    """True when x should go through a Triton kernel: a CUDA tensor, Triton present, not off, and
    small enough for the kernels' 32-bit offsets; with ``large_map_only``, not a small map while
    autograd records (see LARGE_MAP_NUMEL)."""
    if not (HAS_TRITON and x.is_cuda and x.numel() < 2 ** 31
            and os.environ.get('MMDEFSCAN_TRITON', '1') != '0'):
        return False
    if not large_map_only or not torch.is_grad_enabled():
        return True
    return x.numel() >= int(os.environ.get('MMDEFSCAN_TRITON_MIN_NUMEL', LARGE_MAP_NUMEL))
