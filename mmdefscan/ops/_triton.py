"""Optional Triton: the fused kernels of mmdefscan run when Triton is importable and the tensors
are on CUDA; otherwise the exact PyTorch paths run. ``MMDEFSCAN_TRITON=0`` turns the kernels
off (for A/B benchmarks and as an escape hatch). The tests run the kernels on CPU tensors
through Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton is imported) by
calling the ``*_triton`` functions directly; models on CPU always take the PyTorch path."""
import importlib.util
import os

# the kernels live in mmdefscan/ops/kernels/ and are imported only when used
HAS_TRITON = importlib.util.find_spec('triton') is not None


def use_triton(x) -> bool:
    """True when x should go through a Triton kernel: a CUDA tensor, Triton present, not off, and
    small enough for the kernels' 32-bit offsets."""
    return (HAS_TRITON and x.is_cuda and x.numel() < 2 ** 31
            and os.environ.get('MMDEFSCAN_TRITON', '1') != '0')
