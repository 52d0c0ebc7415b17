"""FP8 linear layers for the target model: float8_e4m3fn weights with one scale per output channel,
activations quantised per token at run time, multiplied with `torch._scaled_mm`.

Accuracy (SmolLM2-135M, greedy tokens teacher-forced against fp32, docs/gpu.md): weights rounded to
nearest with one activation term agree on ~92 %; the defaults — GPTQ-rounded weights (`llm.gptq`, when
calibration text is given) and two activation terms (`kernels.fp8_ops`) — on ~96 %, same weight bytes.

Why this scheme: decode reads every weight once per step, so halving the weight bytes (bf16 → fp8) is
close to halving the step time on H100/H200-class GPUs. Per-channel weight scales and per-token activation
scales need no calibration to be usable; the GPTQ rounding (a one-time pass over packaged text, cached)
and the second activation term are what bring greedy agreement with fp32 above 95 %. Embeddings, norms and the LM head stay in the model's
dtype: they are a small share of the bytes in an 8B model and the LM head decides the greedy token.

On CPU the same arithmetic runs as an exact, batch-invariant float64 emulation (see `kernels.fp8_ops`)
because CPU `_scaled_mm` is ~100× slower; the tests check it against `_scaled_mm` itself. It keeps a
float64 copy of each weight (8 bytes per weight): CPU FP8 is for correctness checks, fp32 is the fast
CPU format.

Two conversions, both in place on any module tree built from nn.Linear / RMSNorm (our `llm.model`):
- `convert_to_fp8(model)`: every nn.Linear except the LM head → `FP8Linear`.
- `fuse_norms(model)`: after that, each decoder block's RMSNorm is folded into the FP8 projections that
  read it (q/k/v, gate/up): one fused kernel launch per projection (`kernels.rmsnorm_fp8`), the norm module
  becomes an identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from kernels.fp8_ops import fp8_linear, quantize_weight
from kernels.rmsnorm_fp8 import rmsnorm_fp8_linear

DEFAULT_SKIP = ("lm_head",)


class FP8Linear(nn.Module):
    """y = x Wᵀ + b with W in float8_e4m3fn (per-output-channel scales) and x quantised per token into
    `act_terms` fp8 terms (2: the value and its rounding residual, one matmul; see kernels.fp8_ops)."""

    def __init__(
        self,
        weight_fp8: Tensor,
        weight_scale: Tensor,
        bias: Tensor | None,
        out_dtype: torch.dtype,
        act_terms: int = 2,
    ) -> None:
        super().__init__()
        self.in_features = weight_fp8.shape[1]
        self.out_features = weight_fp8.shape[0]
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale", weight_scale.float())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.out_dtype = out_dtype
        if act_terms not in (1, 2):
            raise ValueError(f"act_terms must be 1 or 2, got {act_terms}")
        self.act_terms = act_terms
        self._dequant: Tensor | None = None  # CPU emulation cache: the exact fp8 values as float64

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, act_terms: int = 2, quantized: tuple[Tensor, Tensor] | None = None
    ) -> FP8Linear:
        """quantized: (fp8 codes, scales) made elsewhere (GPTQ); default: round to nearest."""
        w_q, w_scale = quantized if quantized is not None else quantize_weight(linear.weight.detach())
        return cls(w_q, w_scale, linear.bias, linear.weight.dtype, act_terms)

    def dequantized_weight(self) -> Tensor:
        """The weight the FP8 layer effectively uses, in fp32 (for error measurements)."""
        return self.weight_fp8.float() * self.weight_scale[:, None]

    def _cpu_weight(self) -> Tensor | None:
        if self.weight_fp8.is_cuda:
            return None
        if self._dequant is None or self._dequant.device != self.weight_fp8.device:
            self._dequant = self.weight_fp8.double()
        return self._dequant

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = fp8_linear(x.reshape(-1, shape[-1]), self.weight_fp8, self.weight_scale, self.out_dtype,
                       self.act_terms, w_dequant=self._cpu_weight())  # fmt: skip
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, weight=float8_e4m3fn, "
                f"act_terms={self.act_terms}")  # fmt: skip


class FusedRMSNormFP8Linear(nn.Module):
    """RMSNorm followed by an FP8 projection, computed by one kernel (`kernels.rmsnorm_fp8`)."""

    def __init__(self, norm_weight: Tensor, eps: float, linear: FP8Linear, backend: str = "auto") -> None:
        super().__init__()
        self.register_buffer("norm_weight", norm_weight.detach().clone())
        self.eps = float(eps)
        self.linear = linear
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        lin = self.linear
        y = rmsnorm_fp8_linear(x, self.norm_weight, lin.weight_fp8, lin.weight_scale, self.eps, lin.out_dtype,
                               lin.act_terms, backend=self.backend, w_dequant=lin._cpu_weight())  # fmt: skip
        if lin.bias is not None:
            y = y + lin.bias.to(y.dtype)
        return y


class NormFolded(nn.Module):
    """Stands where an RMSNorm was once its projections normalise their own input: passes x through."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def convert_to_fp8(
    model: nn.Module,
    skip: tuple[str, ...] | Callable[[str], bool] = DEFAULT_SKIP,
    *,
    act_terms: int = 2,
    calibration: Sequence[Sequence[int]] | None = None,
    gptq_cache: Path | None = None,
) -> int:
    """Replace every nn.Linear by an FP8Linear in place, except those whose dotted name has a part in
    `skip` (or for which `skip(name)` is true). Returns how many were converted.

    calibration: token sequences for GPTQ rounding (`llm.gptq`; needs the model's call convention, i.e.
    our Transformer); None rounds to nearest (random-weight benches, models without a tokenizer).
    gptq_cache: a file to read the GPTQ result from, or write it to (`llm.gptq.quantize_cached`).
    Tied weights (embedding = LM head) are untouched because the LM head is skipped by default.
    """
    skipped = skip if callable(skip) else (lambda name: any(part in name.split(".") for part in skip))
    quantized: dict[str, tuple[Tensor, Tensor]] = {}
    if calibration is not None:
        from llm.gptq import quantize_cached

        quantized = quantize_cached(model, calibration, skipped, gptq_cache)
    converted = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is nn.Linear and not skipped(full):
                setattr(parent, child_name, FP8Linear.from_linear(child, act_terms, quantized.get(full)))
                converted += 1
    if not converted:
        raise ValueError("convert_to_fp8: the model has no nn.Linear to convert")
    return converted


# (norm attribute of a decoder block, [(sub-module, projection attribute), ...] that read its output)
_NORM_CONSUMERS = (
    ("input_layernorm", ("self_attn", ("q_proj", "k_proj", "v_proj"))),
    ("post_attention_layernorm", ("mlp", ("gate_proj", "up_proj"))),
)


def fuse_norms(model: nn.Module, backend: str = "auto") -> int:
    """Fold each block's RMSNorms into the FP8 projections that consume them (call after convert_to_fp8).

    Only the Llama/Qwen2 block layout of `llm.model` (pre-norm, the norm's output read only by those
    projections) is rewritten; anything else raises instead of computing something different.
    """
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError("fuse_norms expects a decoder with .layers")
    fused = 0
    for block in layers:
        for norm_name, (sub_name, projections) in _NORM_CONSUMERS:
            norm = getattr(block, norm_name)
            sub = getattr(block, sub_name)
            if isinstance(norm, NormFolded):
                continue
            if not hasattr(norm, "eps") or not hasattr(norm, "weight"):
                raise ValueError(f"{norm_name} is not an RMSNorm with .weight and .eps")
            for proj in projections:
                linear = getattr(sub, proj)
                if not isinstance(linear, FP8Linear):
                    raise ValueError(f"{sub_name}.{proj} is not an FP8Linear: run convert_to_fp8 first")
                setattr(sub, proj, FusedRMSNormFP8Linear(norm.weight, norm.eps, linear, backend))
                fused += 1
            setattr(block, norm_name, NormFolded())
    return fused


def fp8_linears(model: nn.Module) -> list[tuple[str, FP8Linear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, FP8Linear)]


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers (what a decode step streams), counting shared tensors once."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen or t.device.type == "meta":
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
