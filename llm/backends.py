"""Which device and number format the LLM runs in, chosen from the hardware and the profile.

| machine                          | auto target                  | auto draft |
|----------------------------------|------------------------------|------------|
| CUDA, compute capability ≥ 8.9   | FP8 linears (bf16 elsewhere) | bf16       |
|   (H100/H200, L4/L40, RTX 40xx)  |                              |            |
| CUDA with bf16 (≥ 8.0)           | bf16                         | bf16       |
| older CUDA                       | fp16                         | fp16       |
| CPU                              | bf16 (+ int4 1-row steps)    | bf16       |

bf16 is the CPU default: measured on a 2-core x86 CPU (1 thread) a bf16 forward of 1 token took 30 ms and of
9 tokens 33 ms, against 39 ms and 78 ms in fp32 — faster, and it makes a (k+1)-token verify nearly free.
With a Q4_1 GGUF, `prepare_model(quant="auto")` also runs 1-token steps on the file's int4 codes
(llm/quant.py; docs/llm.md has the measurements).
(`--dtype float32` is exact with `transformers` greedy decoding; bf16 rounds differently per verify size.) FP8 is
the *auto* choice only for the `gpu-h100` profile (the `gpu-local` profile keeps bf16 for quality on small
targets); `--dtype fp8` asks for it anywhere it can run. On CPU, fp8 is an exact emulation (correctness
checks, not speed). A request this machine cannot serve (`--device cuda` without CUDA, `--dtype fp8` on a
GPU older than Ada, bf16 on a pre-Ampere GPU, a cuda:N that does not exist) raises `BackendUnavailable`,
a `ValueError` that the CLI prints as one line (app/cli.py `user_errors`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

FP8_MIN_CAPABILITY = (8, 9)
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip
FP8_PROFILES = ("gpu-h100",)


class BackendUnavailable(ValueError):
    """The requested device/dtype cannot run on this machine."""


@dataclass(frozen=True)
class Backend:
    """Where and how one model runs. `dtype` is the activation/compute dtype; `fp8` puts its linear layers
    in float8 weights (with `dtype` activations around them); `kernels` enables our Triton kernels."""

    device: torch.device
    dtype: torch.dtype
    fp8: bool = False
    kernels: bool = False
    reason: str = ""

    @property
    def name(self) -> str:
        kind = "fp8" if self.fp8 else str(self.dtype).removeprefix("torch.")
        return f"{self.device}/{kind}{'+triton' if self.kernels else ''}"


def fp8_supported(device: torch.device) -> bool:
    """FP8 tensor-core matmuls (`torch._scaled_mm`) exist from compute capability 8.9 (Ada, Hopper) on."""
    if device.type != "cuda" or not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY


def _triton_ok() -> bool:
    from kernels.dispatch import triton_importable

    return triton_importable()


def resolve_device(device: str = "auto") -> torch.device:
    text = (device or "auto").strip().lower()
    if text == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise BackendUnavailable(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise BackendUnavailable(f"device {device!r} is not supported (use auto, cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"--device {device} was requested but CUDA is not available here "
            f"(torch {torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA); use --device cpu"
        )
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise BackendUnavailable(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", index)


def select_backend(
    device: str = "auto", dtype: str = "auto", *, profile: str | None = None, role: str = "target"
) -> Backend:
    """The backend for one model ("target" or "draft") from the config's llm.device / llm.dtype."""
    if role not in ("target", "draft"):
        raise ValueError(f"role must be 'target' or 'draft', got {role!r}")
    dev = resolve_device(device)
    want = (dtype or "auto").strip().lower()
    if want != "auto" and want != "fp8" and want not in DTYPES:
        raise BackendUnavailable(f"unknown dtype {dtype!r} (use auto, float32, bfloat16, float16 or fp8)")
    if dev.type == "cpu":
        return _select_cpu(dev, want, role)
    cap = torch.cuda.get_device_capability(dev)
    gpu = f"{torch.cuda.get_device_name(dev)} (compute capability {cap[0]}.{cap[1]})"
    bf16_ok = cap >= (8, 0)
    half = torch.bfloat16 if bf16_ok else torch.float16
    kernels = _triton_ok()
    if want == "fp8":
        if not fp8_supported(dev):
            raise BackendUnavailable(
                f"--dtype fp8 needs a GPU with compute capability ≥ 8.9 (Ada/Hopper); this is {gpu}. "
                f"Use --dtype {'bfloat16' if bf16_ok else 'float16'}"
            )
        if role == "draft":  # the draft is small: bf16 unless the bench shows fp8 drafts pay off
            return Backend(dev, half, False, kernels, f"fp8 target on {gpu}; draft stays {half}")
        return Backend(dev, half, True, kernels, f"--dtype fp8 on {gpu}")
    if want == "auto":
        if role == "target" and profile in FP8_PROFILES and fp8_supported(dev):
            return Backend(dev, half, True, kernels, f"profile {profile} on {gpu}: FP8 target")
        return Backend(dev, half, False, kernels, f"auto on {gpu}")
    chosen = DTYPES[want]
    if chosen == torch.bfloat16 and not bf16_ok:
        raise BackendUnavailable(
            f"--dtype bfloat16 needs compute capability ≥ 8.0; this is {gpu}. Use --dtype float16"
        )
    return Backend(dev, chosen, False, kernels, f"--dtype {want} on {gpu}")


def _select_cpu(dev: torch.device, want: str, role: str) -> Backend:
    if want == "auto":
        # Measured here (bench llm, 1 thread): a bf16 forward costs 30 ms for 1 token and 33 ms for 9, fp32
        # 39 ms and 78 ms — bf16 is faster and makes a (k+1)-token verify nearly free, which speculation needs.
        return Backend(dev, torch.bfloat16, False, False, "CPU: bf16 (faster than fp32; verify cost is flat)")
    if want == "fp8":
        if role == "draft":
            return Backend(dev, torch.float32, False, False, "CPU: fp8 target is emulated; draft stays fp32")
        return Backend(dev, torch.float32, True, False, "CPU: fp8 emulated exactly (correctness, not speed)")
    return Backend(dev, DTYPES[want], False, False, f"CPU: --dtype {want}")


def prepare_model(
    model: nn.Module,
    backend: Backend,
    *,
    fuse_norm: bool = True,
    act_terms: int = 2,
    calibration: Sequence[Sequence[int]] | None = None,
    gptq_cache: Path | None = None,
    quant: str = "none",
    source: Path | str | None = None,
    compile: bool = False,
) -> nn.Module:
    """Apply a backend to a loaded `llm.model.Transformer` in place: fused q/k/v and gate/up projections
    (non-FP8), int4 weights from the shipped file (CPU bf16), FP8 linears (+ fused norm kernels), the
    Triton attention kernel, and a compiled decode step. The model must already be on backend.device in
    backend.dtype.

    quant — "int4": the Q4_1 GGUF's own codes in packed int4 matmuls for 1-row steps (`llm.quant`), needs
    CPU, bf16 and `source` (the folder or GGUF the model was loaded from); "auto": int4 where those hold,
    else nothing; "none". compile — `torch.compile` the static 1-token step (`llm.compiled`; falls back
    to eager with a warning if compilation fails).
    FP8 only: act_terms — fp8 terms per activation (`kernels.fp8_ops`); calibration — token sequences for
    GPTQ weight rounding (`llm.gptq.calibration_sequences`), None for round-to-nearest; gptq_cache —
    where that rounding is cached (`llm.gptq.cache_path`)."""
    if quant not in ("auto", "none", "int4"):
        raise ValueError(f"quant must be auto, none or int4, got {quant!r}")
    if not backend.fp8 and hasattr(model, "fuse_projections"):
        model.fuse_projections()
    if quant != "none" and hasattr(model, "fuse_projections"):
        from llm.quant import QuantError, gguf_source, quantize_int4

        usable = (
            backend.device.type == "cpu" and backend.dtype == torch.bfloat16 and not backend.fp8
            and source is not None and gguf_source(source) is not None
        )  # fmt: skip
        if quant == "int4" or usable:
            if source is None:
                raise QuantError("quant int4 needs the model's source folder or GGUF")
            n = quantize_int4(model, source)
            log.info("int4: %d linear layers run the file's Q4_1 codes for 1-row steps", n)
    if backend.fp8:
        from llm.fp8 import convert_to_fp8, fuse_norms

        n = convert_to_fp8(model, act_terms=act_terms, calibration=calibration, gptq_cache=gptq_cache)
        fused = fuse_norms(model) if fuse_norm else 0
        log.info("fp8: %d linear layers converted, %d fused with their RMSNorm", n, fused)
    if hasattr(model, "set_attention"):
        if backend.kernels and backend.device.type == "cuda":
            model.set_attention(kernel_attention)
        elif backend.fp8 and backend.device.type == "cpu":
            model.set_attention(batch_invariant_attention)
    if compile:
        from llm.compiled import compile_steps

        compile_steps(model)
    return model


def kernel_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start_pos, T: int
) -> torch.Tensor:
    """`llm.model` attention hook → our verify-attention kernel (Triton on CUDA, reference elsewhere)."""
    from kernels.attention import verify_attention

    return verify_attention(q, k_cache, v_cache, start_pos)


def batch_invariant_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start_pos, T: int
) -> torch.Tensor:
    """CPU FP8 attention hook: float64 accumulation, so a (k+1)-token verify gives each position the same
    fp32 attention output as a 1-token step, and the fp8 requantisation that follows cannot diverge."""
    from kernels.attention import verify_attention_reference

    return verify_attention_reference(q, k_cache, v_cache, start_pos, accumulate=torch.float64).to(q.dtype)


def describe_hardware() -> dict[str, object]:
    """What the backend choice was based on (for benches and `--verbose` logs)."""
    info: dict[str, object] = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
        info.update(
            gpu=torch.cuda.get_device_name(dev),
            capability=".".join(map(str, torch.cuda.get_device_capability(dev))),
            fp8=fp8_supported(dev),
            triton=_triton_ok(),
        )
    return info


def graphed(model: nn.Module, backend: Backend, k_max: int):
    """On CUDA, the model wrapped so its 1-token steps and (≤ k_max+1)-token verifies replay CUDA graphs
    (`llm.cuda_graphs.GraphedModel`, same call signature); elsewhere the model itself."""
    if backend.device.type != "cuda":
        return model
    from llm.cuda_graphs import GraphedModel

    return GraphedModel(model, sizes=(1, k_max + 1))
