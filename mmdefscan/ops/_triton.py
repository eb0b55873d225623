"""Optional Triton: the fused kernels of mmdefscan run when Triton is importable and the tensors
are on CUDA; otherwise the exact PyTorch paths run. ``MMDEFSCAN_TRITON=0`` turns the kernels
off (for A/B benchmarks and as an escape hatch). The tests run the kernels on CPU tensors
through Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton is imported) by
calling the ``*_triton`` functions directly; models on CPU always take the PyTorch path."""
import importlib.util
import os

# the kernels live in mmdefscan/ops/kernels/ and are imported only when used
HAS_TRITON = importlib.util.find_spec('triton') is not None

# Tensors below this many elements take the PyTorch path in the ops whose kernel only pays on
# large maps (LayerNorm, the deformable tokens). Eager training is host-bound (docs/
# performance.md, rounds 4-6): there a Triton call costs the host 150-350 us (launcher, autograd
# node, the wrapper's allocations), more than the few native operators it replaces, while on a
# small map the kernel time it saves is a few microseconds. ``MMDEFSCAN_TRITON_MIN_NUMEL=0``
# sends every size to the kernels (A/B benchmarks).
LARGE_MAP_NUMEL = int(os.environ.get('MMDEFSCAN_TRITON_MIN_NUMEL', 2 ** 23))


def use_triton(x, min_numel=0) -> bool:
    """True when x should go through a Triton kernel: a CUDA tensor, Triton present, not off, at
    least ``min_numel`` elements, and small enough for the kernels' 32-bit offsets."""
    return (HAS_TRITON and x.is_cuda and min_numel <= x.numel() < 2 ** 31
            and os.environ.get('MMDEFSCAN_TRITON', '1') != '0')
