"""Choosing between a Triton kernel and its plain-torch reference.

Every kernel in this package exists twice: a Triton version (fast on CUDA) and a torch reference of the
same function (runs everywhere, and is the oracle in tests). `backend="auto"` picks Triton for CUDA tensors
when Triton imports, the reference otherwise. `SPECVOICE_KERNELS=torch|triton` overrides "auto" for the
whole process (the GPU bench uses the explicit argument instead).

Under `TRITON_INTERPRET=1` Triton runs kernels on CPU tensors with numpy; "auto" still picks the
reference there (the interpreter is far too slow for inference), but `backend="triton"` runs the kernel,
which is how the tests check each kernel against its reference without a GPU. Triton reads that variable
when a kernel is *decorated*, so our kernels are built lazily, on first use, not at import.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

BACKENDS = ("auto", "torch", "triton")
log = logging.getLogger(__name__)
_broken: dict[str, str] = {}  # kernel name -> why "auto" stopped using its Triton version


class KernelUnavailable(RuntimeError):
    """`backend="triton"` was asked for where Triton cannot run these tensors."""


@functools.cache
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install raising anything at import
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def mark_broken(kernel: str, exc: BaseException) -> None:
    """A Triton kernel failed under "auto" (e.g. this Triton cannot compile it for this GPU): log once and
    use the reference from now on, so a reply is slower instead of lost."""
    if kernel not in _broken:
        log.warning(
            "Triton kernel %s failed (%s: %s); using the torch reference", kernel, type(exc).__name__, exc
        )
    _broken[kernel] = f"{type(exc).__name__}: {exc}"


def broken_kernels() -> dict[str, str]:
    return dict(_broken)


def resolve_backend(backend: str, tensor: torch.Tensor, kernel: str = "") -> str:
    """'torch' or 'triton' for this call; raises KernelUnavailable when Triton was required but can't run."""
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("SPECVOICE_KERNELS", "auto").strip().lower() or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"SPECVOICE_KERNELS must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if tensor.is_cuda and triton_importable() and kernel not in _broken else "torch"
    if backend == "triton":
        if not triton_importable():
            raise KernelUnavailable("Triton is not installed (pip install triton)")
        if not tensor.is_cuda and not interpreting():
            raise KernelUnavailable(
                "Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 (set before the first kernel call) "
                "to run them on CPU"
            )
    return backend
