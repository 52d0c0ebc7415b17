"""Weight-only quantisation that keeps the shipped weights (CPU, bf16 activations).

The default CPU model ships as a GGUF whose projections are Q4_1: groups of 32 weights along the input
dimension, each group w = d·q + m with q in 0..15 and fp16 d (scale) and m (minimum). torch's CPU packed
int4 matmul computes w = (q − 8)·scale + zero per group of 32, so the file's own codes map onto it with
scale = d and zero = m + 8·d — no re-quantisation, the model runs the weights it was shipped with (the
only rounding: the kernel wants scale/zero in the activation dtype, bf16, where the file has fp16).

The tied embedding / LM head is Q8_0 in the file (int8 codes, one fp16 scale per 32). torch's int8 weight
matmul takes one scale per output row (re-quantising would cost 5x the bf16 error); instead each int8
code splits exactly into two int4 halves, run as two packed int4 matmuls (`Q8Linear`); fp32 logits.

Measured on the 2-core dev box (µs per call, 1 thread, docs/llm.md): the packed int4 matmul beats a bf16
one for a few rows of activations and loses as rows grow (it unpacks per row), so each quantised
linear keeps its bf16 weight too and picks the kernel by the number of rows: ≤ `max_rows` → packed,
else bf16. A 1-token decode step and a short verify (≤ 5 rows) run the packed weights, a longer verify or a
prefill chunk runs bf16.
"""

from __future__ import annotations

import contextvars
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

GROUP = 32
QUANT_MODES = ("none", "int4")
# Rows of activations up to which the packed kernels are used: decode steps and short verifies (a pending
# token + up to 4 draft-head tokens). A whole forward of T rows at position 120-200, 1 thread, hidden states
# returned (docs/llm.md): packed T=1/2/3/4/5 21/28/28/30/38 ms against bf16 53/74/56/76/56 ms; from ~7 rows
# on bf16 wins (the packed kernel unpacks per row of activations).
PACKED_MAX_ROWS = 5
# A batched forward (llm/batch.py) of several sessions' rows overrides that limit while it runs: per row
# the packed kernel's cost is flat, so up to ~8 rows it still beats bf16 (docs/llm.md, "Batching").
packed_rows_limit: contextvars.ContextVar[int | None] = contextvars.ContextVar("packed_rows_limit", default=None)

_LAYER_TENSORS = {  # our module path inside a block -> the GGUF tensors it concatenates, in order
    "self_attn.qkv_proj": ("attn_q", "attn_k", "attn_v"),
    "self_attn.q_proj": ("attn_q",),
    "self_attn.k_proj": ("attn_k",),
    "self_attn.v_proj": ("attn_v",),
    "self_attn.o_proj": ("attn_output",),
    "mlp.gate_up_proj": ("ffn_gate", "ffn_up"),
    "mlp.gate_proj": ("ffn_gate",),
    "mlp.up_proj": ("ffn_up",),
    "mlp.down_proj": ("ffn_down",),
}


class QuantError(ValueError):
    """The model or file cannot be quantised as asked (wrong dtype/device, not a Q4_1 GGUF, mismatch)."""


# -- reading the file's own codes -------------------------------------------------------------------------
def unpack_q4_1(raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GGUF Q4_1 blocks of an [n, k] tensor -> (codes uint8 [n, k] in 0..15, d fp32 [n, k/32], m fp32).

    A block is 20 bytes: d (fp16), m (fp16), then 16 bytes whose low nibbles are weights 0..15 of the
    group and high nibbles weights 16..31.
    """
    blocks = np.ascontiguousarray(raw).reshape(n, k // GROUP, 20)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    packed = blocks[..., 4:20]
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).reshape(n, k)
    return codes, d, m


def unpack_q8_0(raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """GGUF Q8_0 blocks (fp16 d + 32 int8 codes) of an [n, k] tensor -> (codes int8 [n, k], d fp32 [n, k/32])."""
    blocks = np.ascontiguousarray(raw).reshape(n, k // GROUP, 34)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    codes = blocks[..., 2:34].copy().view(np.int8).reshape(n, k)
    return codes, d


def dequantize_q8_0(codes: Tensor, d: Tensor) -> Tensor:
    n, k = codes.shape
    return (codes.float().view(n, k // GROUP, GROUP) * d.unsqueeze(-1)).view(n, k)


def _llama_rows(n: int, n_head: int) -> np.ndarray:
    """Row order that undoes the llama GGUF converter's q/k permutation (pairs of rotary halves)."""
    return np.arange(n).reshape(n_head, n // n_head // 2, 2).swapaxes(2, 1).reshape(n)


class GGUFWeights:
    """The quantised tensors of one GGUF, by their GGUF names, in our row order."""

    def __init__(self, path: Path | str, n_heads: int, n_kv_heads: int, arch: str = "llama") -> None:
        from gguf import GGUFReader

        self.path = Path(path)
        reader = GGUFReader(str(self.path))
        self.tensors = {t.name: t for t in reader.tensors}
        self.n_heads, self.n_kv_heads, self.arch = n_heads, n_kv_heads, arch

    def q4_1(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tensor = self.tensors.get(name)
        if tensor is None:
            raise QuantError(f"{self.path.name}: no tensor {name}")
        if tensor.tensor_type.name != "Q4_1":
            raise QuantError(f"{self.path.name}: {name} is {tensor.tensor_type.name}, not Q4_1")
        k, n = (int(x) for x in tensor.shape)  # GGUF lists the fastest-varying dimension first
        codes, d, m = unpack_q4_1(tensor.data, n, k)
        heads = {"attn_q": self.n_heads, "attn_k": self.n_kv_heads}.get(name.split(".")[-2])
        if heads is not None and self.arch == "llama":
            rows = _llama_rows(n, heads)
            codes, d, m = codes[rows], d[rows], m[rows]
        return codes, d, m

    def q8_0(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        tensor = self.tensors.get(name)
        if tensor is None or tensor.tensor_type.name != "Q8_0":
            kind = "missing" if tensor is None else tensor.tensor_type.name
            raise QuantError(f"{self.path.name}: {name} is {kind}, not Q8_0")
        k, n = (int(x) for x in tensor.shape)
        return unpack_q8_0(tensor.data, n, k)


def dequantize_q4_1(codes: Tensor, d: Tensor, m: Tensor) -> Tensor:
    """The file's weights in fp32: d·q + m per group (what the GGUF → safetensors conversion computes)."""
    n, k = codes.shape
    w = codes.float().view(n, k // GROUP, GROUP) * d.unsqueeze(-1) + m.unsqueeze(-1)
    return w.view(n, k)


# -- the packed linears --------------------------------------------------------------------------------
class Int4Linear(nn.Module):
    """A linear holding the file's Q4_1 codes packed for `_weight_int4pack_mm_for_cpu` (group 32) and its
    bf16 weight; rows ≤ max_rows use the packed kernel, more rows the bf16 matmul."""

    def __init__(
        self, codes: Tensor, d: Tensor, m: Tensor, dense: nn.Linear, max_rows: int = PACKED_MAX_ROWS
    ) -> None:
        super().__init__()
        n, k = codes.shape
        if k % GROUP or dense.weight.shape != (n, k):
            raise QuantError(
                f"int4: codes {tuple(codes.shape)} do not fit weight {tuple(dense.weight.shape)}"
            )
        dtype = dense.weight.dtype
        self.in_features, self.out_features, self.max_rows = k, n, max_rows
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
        self.register_buffer("packed", packed)
        # [k/32, n, 2]: per group and output row, the scale and the value of code 8
        scales_zeros = torch.stack([d, m + 8 * d], dim=-1).transpose(0, 1).contiguous().to(dtype)
        self.register_buffer("scales_zeros", scales_zeros)
        self.weight = dense.weight
        self.bias = dense.bias

    def dequantized(self) -> Tensor:
        """The weight the packed kernel multiplies by, in fp32 (bf16 scale/zero, exact codes)."""
        eye = torch.eye(self.in_features, dtype=self.weight.dtype)
        rows = [self._packed(eye[i : i + 1]) for i in range(self.in_features)]  # one row at a time
        return torch.cat(rows).float().t().contiguous()

    def _packed(self, x2d: Tensor) -> Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2d, self.packed, GROUP, self.scales_zeros)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        if rows > (packed_rows_limit.get() or self.max_rows):
            return F.linear(x, self.weight, self.bias)
        y = self._packed(x.reshape(rows, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, group={GROUP}, packed rows <= {self.max_rows}"
        )


class Q8Linear(nn.Module):
    """A linear holding Q8_0 codes (int8, one fp16 scale per 32) exactly, as two packed int4 matmuls:
    q = 16·hi + lo with lo in 0..15 and hi in −8..7, so w = d·q = (16d)·hi + d·lo, each half a group-32
    int4 weight. Returns fp32 (the two halves are summed in fp32). Rows ≤ max_rows use it, more rows the
    bf16 weight (e.g. the tied embedding).

    Measured for SmolLM2's 49152×576 head, 1 row, 1 thread: bf16 9.0 ms, int8 per-row scales
    (`_weight_int8pack_mm`) 5.3 ms with 5x the bf16 error, these two int4 halves 3.9 ms with the bf16 error.
    """

    def __init__(self, codes: Tensor, d: Tensor, dense: nn.Linear, max_rows: int = PACKED_MAX_ROWS) -> None:
        super().__init__()
        if codes.shape != dense.weight.shape or codes.shape[1] % GROUP:
            raise QuantError(f"q8: codes {tuple(codes.shape)} do not fit {tuple(dense.weight.shape)}")
        self.out_features, self.in_features = codes.shape
        self.max_rows = max_rows
        q = codes.to(torch.int32)
        lo = q & 15
        hi = (q - lo) // 16
        dtype = dense.weight.dtype
        pack = torch.ops.aten._convert_weight_to_int4pack_for_cpu
        self.register_buffer("packed_hi", pack((hi + 8).contiguous(), 1))
        self.register_buffer("packed_lo", pack(lo.contiguous(), 1))
        zeros = torch.zeros_like(d)
        self.register_buffer("sz_hi", torch.stack([16 * d, zeros], -1).transpose(0, 1).contiguous().to(dtype))
        self.register_buffer("sz_lo", torch.stack([d, 8 * d], -1).transpose(0, 1).contiguous().to(dtype))
        self.weight = dense.weight
        self.bias = dense.bias

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        if rows > (packed_rows_limit.get() or self.max_rows):
            return F.linear(x, self.weight, self.bias)
        x2d = x.reshape(rows, self.in_features)
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
        y = mm(x2d, self.packed_hi, GROUP, self.sz_hi).float() + mm(x2d, self.packed_lo, GROUP, self.sz_lo)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


# -- applying it to a model -----------------------------------------------------------------------------
def gguf_source(folder: Path | str) -> Path | None:
    """The GGUF a converted folder came from (llm.loading records it), or the path itself if a GGUF."""
    path = Path(folder)
    if path.is_file() and path.suffix == ".gguf":
        return path
    record = path / "specvoice-source.json"
    if record.is_file():
        source = Path(json.loads(record.read_text()).get("gguf", ""))
        return source if source.is_file() else None
    ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else []
    return ggufs[0] if len(ggufs) == 1 else None


CODES_FILE = "specvoice-gguf-codes-v2.safetensors"


def file_codes(folder: Path | str, n_heads: int, n_kv_heads: int) -> dict[str, Tensor]:
    """The GGUF's Q4_1 codes/scales/minima and exact Q8_0 head of a converted folder, by GGUF name.

    Parsing the GGUF's metadata costs ~8 s here (its vocabulary), so the unpacked codes are cached next
    to the converted weights (written to a temporary file and renamed: never half-written).
    """
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    cached = folder / CODES_FILE if folder.is_dir() else None
    if cached is not None and cached.is_file():
        return load_file(str(cached))
    gguf = gguf_source(folder)
    if gguf is None:
        raise QuantError(f"{folder}: int4 weights need the model's Q4_1 GGUF file, and none is recorded")
    weights = GGUFWeights(gguf, n_heads, n_kv_heads)
    out: dict[str, Tensor] = {}
    for name, tensor in weights.tensors.items():
        if tensor.tensor_type.name == "Q4_1":
            codes, d, m = weights.q4_1(name)
            out[f"{name}.codes"] = torch.from_numpy(codes)
            out[f"{name}.d"], out[f"{name}.m"] = torch.from_numpy(d), torch.from_numpy(m)
        elif tensor.tensor_type.name == "Q8_0":
            codes, d = weights.q8_0(name)
            out[f"{name}.codes8"], out[f"{name}.d"] = torch.from_numpy(codes), torch.from_numpy(d)
    if not any(k.endswith(".codes") for k in out):
        raise QuantError(f"{gguf.name}: no Q4_1 tensors; int4 weights need a Q4_1 file")
    if cached is not None:
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        save_file(out, str(tmp))
        os.replace(tmp, cached)
    return out


def quantize_int4(model, folder: Path | str, *, max_rows: int = PACKED_MAX_ROWS) -> int:
    """Swap every Q4_1 projection of `model` (our Transformer, CPU, bf16) for an `Int4Linear` built from
    the file's own codes, and the tied Q8_0 head for a `Q8Linear`. `folder`: the converted folder (or the
    GGUF) the model was loaded from. Returns the number of linears swapped.

    Checks that the file is the one the model was loaded from: the dequantised codes must round to the
    model's bf16 weights exactly.
    """
    if model.device.type != "cpu" or model.dtype != torch.bfloat16:
        raise QuantError(
            f"int4 weights need a CPU bf16 model (got {model.device}/{model.dtype}); use --dtype bfloat16"
        )
    codes_by_name = file_codes(folder, model.args.n_heads, model.args.n_kv_heads)

    def q4_1(name: str) -> tuple[Tensor, Tensor, Tensor]:
        if f"{name}.codes" not in codes_by_name:
            raise QuantError(f"{folder}: {name} is not Q4_1 in the model file")
        return codes_by_name[f"{name}.codes"], codes_by_name[f"{name}.d"], codes_by_name[f"{name}.m"]

    swapped = 0
    for i, block in enumerate(model.layers):
        for path, parts in _LAYER_TENSORS.items():
            parent_name, attr = path.split(".")
            parent = getattr(block, parent_name)
            dense = getattr(parent, attr, None)
            if not isinstance(dense, nn.Linear):
                continue
            pieces = [q4_1(f"blk.{i}.{part}.weight") for part in parts]
            codes, d, m = (torch.cat(x) for x in zip(*pieces, strict=True))
            if not torch.equal(dequantize_q4_1(codes, d, m).to(dense.weight.dtype), dense.weight):
                raise QuantError(f"{folder}: blk.{i} {parts} do not match the loaded weights")
            setattr(parent, attr, Int4Linear(codes, d, m, dense, max_rows))
            swapped += 1
    head_name = "token_embd.weight" if model.args.tie_embeddings else "output.weight"
    if isinstance(model.lm_head, nn.Linear) and f"{head_name}.codes8" in codes_by_name:
        codes8, d8 = codes_by_name[f"{head_name}.codes8"], codes_by_name[f"{head_name}.d"]
        if not torch.equal(dequantize_q8_0(codes8, d8).to(model.lm_head.weight.dtype), model.lm_head.weight):
            raise QuantError(f"{folder}: the Q8_0 head does not match the loaded LM head")
        model.lm_head = Q8Linear(codes8, d8, model.lm_head, max_rows)
        swapped += 1
    return swapped
