"""A compact Llama / Qwen2-family decoder with a static KV cache (gpt-fast style).

Why our own model instead of `transformers`: a speculative engine calls the target with 1-token decodes,
16-token prefill chunks and (k+1)-token verifies, and rolls back rejected positions. With a static cache
addressed by a position pointer all of that is one `forward(tokens, cache, start_pos)` and a rollback is
just a smaller `start_pos` next time: entries past the pointer are never read and get overwritten.

Weights are shared: one `Transformer` serves many sessions, each owning a small `KVCache`. Sessions may run
in different threads, so every forward holds the model's lock.

One forward implementation, `Transformer.run`, serves the eager forward, the compiled static step
(llm/compiled.py) and CUDA-graph replays (llm/cuda_graphs.py): a `StepContext` (positions, RoPE rows, the
causal mask) is built once per forward, keys/values are written with `index_copy_`, and the position is an
int (eager: attention reads only the valid rows) or a tensor (static shape: the whole cache under a mask).

Hooks for the backends (llm/backends.py `prepare_model`):
- every projection (q/k/v/o, gate/up/down, lm_head) is a plain `nn.Linear`, so it can be swapped for an
  FP8 linear or a packed int4 one (llm/quant.py);
- `fuse_projections()` rewrites q/k/v into one `qkv_proj` and gate/up into one `gate_up_proj` (CPU and
  non-FP8 GPUs; the FP8 path folds each norm into each projection instead);
- `RMSNorm` is its own module;
- attention over the cache goes through the built-in masked SDPA or a function with the signature of
  `attention` below, which a backend installs per model with `Transformer.set_attention(fn)`.

Module names mirror Hugging Face's (`embed_tokens`, `layers.N.self_attn.q_proj`, ...), so an HF
safetensors state dict loads after stripping its `model.` prefix.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Int4 weights (llm/quant.py): a forward of several sessions' rows uses the packed kernel up to this many
# rows in all (measured in docs/llm.md, "Batching"); a single session's forward keeps quant.PACKED_MAX_ROWS.
BATCH_PACKED_MAX_ROWS = 8

AttentionFn = Callable[[Tensor, Tensor, Tensor, "int | Tensor", int], Tensor]


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_positions: int = 4096
    tie_embeddings: bool = False
    qkv_bias: bool = False

    @classmethod
    def from_hf_config(cls, config: dict) -> ModelArgs:
        """Read a Llama or Qwen2 `config.json` (other architectures are refused, not silently mis-run)."""
        model_type = config.get("model_type")
        if model_type not in ("llama", "qwen2"):
            raise ValueError(
                f"unsupported model_type {model_type!r}: specvoice's decoder runs llama and qwen2"
            )
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise ValueError(f"unsupported rope_type {rope_type!r} (only plain RoPE is implemented)")
        n_heads = config["num_attention_heads"]
        return cls(
            vocab_size=config["vocab_size"],
            dim=config["hidden_size"],
            n_layers=config["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=config.get("num_key_value_heads") or n_heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // n_heads,
            intermediate_size=config["intermediate_size"],
            norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
            max_positions=config.get("max_position_embeddings", 4096),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)),
        )


class KVCache:
    """One session's keys and values for every layer: [1, n_kv_heads, max_len, head_dim] each.

    The cache holds no length: the caller's `start_pos` says where valid entries end, so rolling back is
    free. `max_len` bounds the conversation (prompt + history + reply).
    """

    def __init__(
        self, args: ModelArgs, max_len: int, *, dtype: torch.dtype, device: torch.device | str
    ) -> None:
        if max_len > args.max_positions:
            raise ValueError(f"cache of {max_len} positions exceeds the model's {args.max_positions}")
        shape = (1, args.n_kv_heads, max_len, args.head_dim)
        self.max_len = max_len
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layers)]


def attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, start_pos: int, T: int) -> Tensor:
    """Reference causal attention of T new queries over the cache (whose rows up to start_pos+T are valid).

    q: [1, n_heads, T, head_dim]; caches: [1, n_kv_heads, max_len, head_dim]; returns [1, n_heads, T, hd].
    Query i sits at absolute position start_pos+i and sees positions 0..start_pos+i. The model's built-in
    path computes the same with a mask built once per forward; this function is the hook's reference.
    """
    end = start_pos + T
    k, v = k_cache[:, :, :end], v_cache[:, :, :end]
    mask = None
    if T > 1:
        rows = torch.arange(T, device=q.device).unsqueeze(1) + start_pos
        mask = torch.arange(end, device=q.device).unsqueeze(0) <= rows
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


@dataclass
class StepContext:
    """What every layer of one forward shares, built once per forward.

    positions: [T] int64 absolute positions (where keys/values are written, `index_copy_`);
    start: the first position, an int (eager) or a 1-element tensor (static-shape steps: compiled or
    CUDA-graph replays, so one graph serves every position); kv_len: how many cache rows attention reads
    (start+T eagerly, the whole cache in a static step); mask: [T, kv_len] bool (None = no masking needed,
    a 1-token eager step); cos/sin: the RoPE rows of those positions.
    """

    positions: Tensor
    start: int | Tensor
    kv_len: int
    mask: Tensor | None
    cos: Tensor
    sin: Tensor


@dataclass
class BatchRow:
    """One session's part of a batched forward (`Transformer.forward_batch`): `tokens` written into its
    own `cache` at `start`.. (a 1-token decode step, a (k+1)-token verify or a prefill chunk).

    logits: which rows' logits come back — "all" (a verify), "last" (a decode step) or "none" (a prefill
    chunk: the costly LM head is skipped for it); hidden: also return the final-norm hidden states of all
    its positions (what a draft head reads).
    """

    tokens: list[int]
    cache: KVCache
    start: int
    logits: str = "all"
    hidden: bool = False


@dataclass
class RowSpan:
    """Where one batch row sits in the packed forward and what its attention reads (as `StepContext`)."""

    offset: int
    T: int
    positions: Tensor
    start: int
    kv_len: int
    mask: Tensor | None


@dataclass
class BatchContext:
    """A `StepContext` for rows of several sessions packed into one [1, M] forward: the linears see all M
    tokens at once, attention runs per row over that row's own cache (`spans`); cos/sin are per token."""

    spans: list[RowSpan]
    cos: Tensor
    sin: Tensor


def forward_rows(model, rows: Sequence[BatchRow]) -> list[tuple[Tensor | None, Tensor | None]]:
    """`forward_batch`, except that a single row is the plain call `model(tokens, cache, start, ...)` —
    exactly what a session alone has always run, through whatever wraps the model (CUDA-graph replays:
    `llm.cuda_graphs.GraphedModel`; compiled steps)."""
    if len(rows) != 1:
        return model.forward_batch(rows)
    row = rows[0]
    tokens = torch.tensor(row.tokens)
    if row.hidden:
        logits, hidden = model(tokens, row.cache, row.start, return_hidden=True)
        return [(None if row.logits == "none" else logits[-1:] if row.logits == "last" else logits, hidden)]
    logits = model(tokens, row.cache, row.start, last_only=row.logits != "all")
    return [(None if row.logits == "none" else logits, None)]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalised in fp32, rounded to the model dtype, then scaled: the reference implementation's
        # rounding, so bf16 logits stay as close to transformers' as the matmuls allow.
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _fuse_linears(parts: list[nn.Linear]) -> nn.Linear:
    """One linear whose output is the concatenation of `parts`' outputs (same input)."""
    first = parts[0]
    fused = nn.Linear(
        first.in_features, sum(p.out_features for p in parts), bias=first.bias is not None,
        device=first.weight.device, dtype=first.weight.dtype,
    )  # fmt: skip
    fused.weight.data = torch.cat([p.weight.data for p in parts])
    if first.bias is not None:
        fused.bias.data = torch.cat([p.bias.data for p in parts])
    return fused.requires_grad_(False)


class Attention(nn.Module):
    """q/k/v as three linears (the checkpoint's layout, which the FP8 path rewrites per projection) or, after
    `fuse()`, one `qkv_proj` (one matmul per layer instead of three: small GEMVs sit near a per-call floor)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=args.qkv_bias)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.qkv_proj: nn.Module | None = None
        self.attention_fn: AttentionFn | None = None  # None: built-in SDPA with the forward's mask

    def fuse(self) -> None:
        if self.qkv_proj is None:
            self.qkv_proj = _fuse_linears([self.q_proj, self.k_proj, self.v_proj])
            del self.q_proj, self.k_proj, self.v_proj

    def forward(
        self, x: Tensor, k_cache: Tensor | list[Tensor], v_cache: Tensor | list[Tensor],
        ctx: StepContext | BatchContext,
    ) -> Tensor:  # fmt: skip
        T = x.shape[1]
        if self.qkv_proj is not None:
            kv = self.n_kv_heads * self.head_dim
            q, k, v = self.qkv_proj(x).split((self.n_heads * self.head_dim, kv, kv), dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(1, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(1, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(1, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = q * ctx.cos + _rotate_half(q) * ctx.sin
        k = k * ctx.cos + _rotate_half(k) * ctx.sin
        if isinstance(ctx, BatchContext):  # rows of several sessions: each attends over its own cache
            y = torch.cat([
                self._attend(q[:, :, span.offset : span.offset + span.T], k[:, :, span.offset : span.offset + span.T],
                             v[:, :, span.offset : span.offset + span.T], kc, vc, span, x.dtype)
                for span, kc, vc in zip(ctx.spans, k_cache, v_cache, strict=True)
            ], dim=2) if len(ctx.spans) > 1 else self._attend(q, k, v, k_cache[0], v_cache[0], ctx.spans[0], x.dtype)
        else:
            y = self._attend(q, k, v, k_cache, v_cache, ctx, x.dtype)
        return self.o_proj(y.transpose(1, 2).reshape(1, T, self.n_heads * self.head_dim))

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor,
        ctx: StepContext | RowSpan, dtype: torch.dtype,
    ) -> Tensor:  # fmt: skip
        """Write k/v at ctx.positions and attend q ([1, H, T, hd]) over the cache up to ctx.kv_len."""
        k_cache.index_copy_(2, ctx.positions, k.to(k_cache.dtype))
        v_cache.index_copy_(2, ctx.positions, v.to(v_cache.dtype))
        if self.attention_fn is not None:
            return self.attention_fn(q, k_cache, v_cache, ctx.start, q.shape[2])
        k, v = k_cache[:, :, : ctx.kv_len], v_cache[:, :, : ctx.kv_len]
        if q.dtype != torch.float32 and q.device.type == "cpu":
            # CPU SDPA in bf16 took 4-6x longer than in fp32 for one query (190-530 us vs 40-110 us
            # per layer here); in fp32 it is also the more exact of the two.
            q, k, v = q.float(), k.float(), v.float()
        gqa = self.n_heads != self.n_kv_heads
        return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, enable_gqa=gqa).to(dtype)


class MLP(nn.Module):
    """SwiGLU; after `fuse()` gate and up are one `gate_up_proj` (their outputs concatenated)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.dim, bias=False)
        self.gate_up_proj: nn.Module | None = None

    def fuse(self) -> None:
        if self.gate_up_proj is None:
            self.gate_up_proj = _fuse_linears([self.gate_proj, self.up_proj])
            del self.gate_proj, self.up_proj

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = MLP(args)

    def forward(
        self, x: Tensor, k_cache: Tensor | list[Tensor], v_cache: Tensor | list[Tensor],
        ctx: StepContext | BatchContext,
    ) -> Tensor:  # fmt: skip
        x = x + self.self_attn(self.input_layernorm(x), k_cache, v_cache, ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """The decoder. `forward(tokens, cache, start_pos) -> logits[T, vocab]` (fp32) for any T."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.lock = threading.RLock()  # shared by every session of this model
        self.compiled = None  # a `llm.compiled.CompiledSteps` once `llm.compiled.compile_steps` ran
        if self.embed_tokens.weight.device.type != "meta":
            self.init_rope()

    # -- construction -------------------------------------------------------------------------------
    def init_rope(self) -> None:
        """Precompute cos/sin for every position, the same way (fp32, concatenated halves) as HF Llama."""
        a, device = self.args, self.embed_tokens.weight.device
        inv_freq = 1.0 / (
            a.rope_theta
            ** (torch.arange(0, a.head_dim, 2, dtype=torch.int64, device=device).float() / a.head_dim)
        )
        freqs = torch.outer(torch.arange(a.max_positions, device=device, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        dtype = self.embed_tokens.weight.dtype
        self.rope_cos, self.rope_sin = emb.cos().to(dtype), emb.sin().to(dtype)

    @classmethod
    def from_folder(
        cls, folder: Path | str, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> Transformer:
        """Load an HF folder (config.json + safetensors, single or sharded)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        args = ModelArgs.from_hf_config(json.loads((folder / "config.json").read_text()))
        index = folder / "model.safetensors.index.json"
        files = (
            sorted(set(json.loads(index.read_text())["weight_map"].values()))
            if index.is_file()
            else ["model.safetensors"]
        )
        state: dict[str, Tensor] = {}
        for name in files:
            state.update(load_file(str(folder / name), device="cpu"))
        return cls.from_state_dict(args, state, dtype=dtype, device=device)

    @classmethod
    def from_state_dict(
        cls,
        args: ModelArgs,
        hf_state: dict[str, Tensor],
        *,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ) -> Transformer:
        state = {k.removeprefix("model."): v for k, v in hf_state.items() if "rotary_emb" not in k}
        if args.tie_embeddings:
            state.pop("lm_head.weight", None)
        with torch.device("meta"):
            model = cls(args)
            if any(".qkv_proj." in k or ".gate_up_proj." in k for k in state):
                model.fuse_projections()  # a state dict of a fused model (e.g. `state_dict()` of a prepared one)
        if args.tie_embeddings:
            state["lm_head.weight"] = state["embed_tokens.weight"]
        expected = set(model.state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(
                f"weights do not fit the config: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
        if args.tie_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        model.init_rope()
        return model.eval().requires_grad_(False)

    @classmethod
    def random(
        cls, args: ModelArgs, *, seed: int = 0, std: float = 0.02, dtype: torch.dtype = torch.float32
    ) -> Transformer:
        """Random weights (for algorithm tests and GPU benchmarks at real shapes)."""
        generator = torch.Generator().manual_seed(seed)
        model = cls(args)
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                continue
            p.data.copy_(torch.randn(p.shape, generator=generator) * std)
        model.init_rope()
        return model.to(dtype).eval().requires_grad_(False)

    # -- use ----------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def new_cache(self, max_len: int) -> KVCache:
        return KVCache(self.args, max_len, dtype=self.dtype, device=self.device)

    def set_attention(self, fn: AttentionFn | None) -> None:
        """Swap the attention-over-cache function (e.g. a Triton kernel) in every layer; None restores
        the built-in masked SDPA."""
        for layer in self.layers:
            layer.self_attn.attention_fn = fn

    def fuse_projections(self) -> Transformer:
        """Load-time rewrite: q/k/v into one `qkv_proj` and gate/up into one `gate_up_proj` per layer (same
        math, fewer and larger matmuls). The FP8 path keeps the per-projection layout (it folds each norm
        into each projection), so this is applied by `llm.backends.prepare_model` for the other backends."""
        for layer in self.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()
        return self

    # -- the one forward implementation ------------------------------------------------------------
    def step_context(self, start_pos: int | Tensor, T: int, cache: KVCache) -> StepContext:
        """Positions, RoPE rows and the causal mask of one forward, built once for all layers.

        An int `start_pos` is an eager step (attention reads rows < start+T, no mask for one token); a
        1-element tensor is a static-shape step (compiled or CUDA graph): attention reads the whole cache
        and the mask hides rows past each query's position, so one trace serves every position.
        """
        device = self.device
        if isinstance(start_pos, Tensor):
            positions = start_pos.reshape(1) + torch.arange(T, device=device)
            mask = torch.arange(cache.max_len, device=device).unsqueeze(0) <= positions.unsqueeze(1)
            kv_len = cache.max_len
            cos, sin = self.rope_cos.index_select(0, positions), self.rope_sin.index_select(0, positions)
        else:
            positions = torch.arange(start_pos, start_pos + T, device=device)
            kv_len = start_pos + T
            mask = None
            if T > 1:
                mask = torch.arange(kv_len, device=device).unsqueeze(0) <= positions.unsqueeze(1)
            cos, sin = self.rope_cos[start_pos:kv_len], self.rope_sin[start_pos:kv_len]
        return StepContext(positions, start_pos, kv_len, mask, cos, sin)

    def run(
        self,
        tokens: Tensor,
        start_pos: int | Tensor,
        k_caches: list[Tensor],
        v_caches: list[Tensor],
        cache: KVCache,
        last_only: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """tokens [1, T] at start_pos -> (fp32 logits [T or 1, vocab], final-norm hidden [1, T or 1, dim]).

        Shared by the eager forward, the compiled step (`llm.compiled`) and CUDA-graph replays
        (`llm.cuda_graphs`); no lock, no checks: callers hold the lock and validated the positions.
        """
        ctx = self.step_context(start_pos, tokens.shape[1], cache)
        x = self.embed_tokens(tokens)
        for layer, k_cache, v_cache in zip(self.layers, k_caches, v_caches, strict=True):
            x = layer(x, k_cache, v_cache, ctx)
        if last_only:
            x = x[:, -1:]
        hidden = self.norm(x)
        return self.lm_head(hidden)[0].float(), hidden

    def forward_batch(self, rows: Sequence[BatchRow]) -> list[tuple[Tensor | None, Tensor | None]]:
        """One forward over rows of different sessions: per row (fp32 logits [T or 1, vocab] or None,
        final-norm hidden [1, T, dim] or None), as `forward` would return them for that row alone.

        The rows' tokens are packed into one [1, M] sequence, so every linear runs once with M rows (a CPU
        decode step is memory-bound: 8 rows cost far less than 8 steps); attention, RoPE positions and the
        keys/values written are each row's own, so rows never see each other and each session keeps its own
        cache and rollback. A single row runs the plain `forward` (compiled / CUDA-graph steps included).
        """
        if not rows:
            return []
        caches = {id(row.cache) for row in rows}
        if len(caches) != len(rows):
            raise ValueError("two rows of one batch write the same cache")
        for row in rows:
            T = len(row.tokens)
            if T == 0:
                raise ValueError("a batch row needs at least one token")
            if row.start < 0 or row.start + T > row.cache.max_len:
                raise ValueError(f"positions {row.start}..{row.start + T} do not fit a cache of {row.cache.max_len}")
            if row.logits not in ("all", "last", "none"):
                raise ValueError(f"logits must be all, last or none, got {row.logits!r}")
        if len(rows) == 1:
            row = rows[0]
            logits, hidden = self.forward(torch.tensor(row.tokens), row.cache, row.start,
                                          last_only=row.logits != "all" and not row.hidden, return_hidden=True)
            if row.hidden and row.logits == "last":
                logits = logits[-1:]
            return [(None if row.logits == "none" else logits, hidden if row.hidden else None)]
        from llm.quant import packed_rows_limit

        token = packed_rows_limit.set(BATCH_PACKED_MAX_ROWS)
        try:
            with self.lock, torch.inference_mode():
                return self.run_batch(rows)
        finally:
            packed_rows_limit.reset(token)

    def run_batch(self, rows: Sequence[BatchRow]) -> list[tuple[Tensor | None, Tensor | None]]:
        """`forward_batch` without the lock and checks (see there)."""
        device = self.device
        spans, offset, positions = [], 0, []
        for row in rows:
            T = len(row.tokens)
            pos = torch.arange(row.start, row.start + T, device=device)
            kv_len = row.start + T
            mask = torch.arange(kv_len, device=device).unsqueeze(0) <= pos.unsqueeze(1) if T > 1 else None
            spans.append(RowSpan(offset, T, pos, row.start, kv_len, mask))
            positions.append(pos)
            offset += T
        every = torch.cat(positions)
        ctx = BatchContext(spans, self.rope_cos.index_select(0, every), self.rope_sin.index_select(0, every))
        tokens = torch.tensor([t for row in rows for t in row.tokens], device=device).unsqueeze(0)
        x = self.embed_tokens(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, [row.cache.k[i] for row in rows], [row.cache.v[i] for row in rows], ctx)
        # Final norm only where something is returned, the LM head only for the rows whose logits are wanted.
        normed, head = [], []  # token indices into x; indices into the normed rows
        for row, span in zip(rows, spans, strict=True):
            first = len(normed)
            if row.hidden:
                normed.extend(range(span.offset, span.offset + span.T))
                head.extend([] if row.logits == "none" else
                            range(first, first + span.T) if row.logits == "all" else [first + span.T - 1])
            elif row.logits == "all":
                normed.extend(range(span.offset, span.offset + span.T))
                head.extend(range(first, first + span.T))
            elif row.logits == "last":
                normed.append(span.offset + span.T - 1)
                head.append(first)
        if not normed:
            return [(None, None) for _ in rows]
        hidden = self.norm(x[:, torch.tensor(normed, device=device)])
        logits = self.lm_head(hidden[:, torch.tensor(head, device=device)])[0].float() if head else None
        out, n_at, h_at = [], 0, 0
        for row, span in zip(rows, spans, strict=True):
            n = span.T if row.hidden or row.logits == "all" else (1 if row.logits == "last" else 0)
            h = 0 if row.logits == "none" else (span.T if row.logits == "all" else 1)
            out.append((logits[h_at : h_at + h] if h else None, hidden[:, n_at : n_at + n] if row.hidden else None))
            n_at, h_at = n_at + n, h_at + h
        return out

    def forward(
        self,
        tokens: Tensor,
        cache: KVCache,
        start_pos: int,
        *,
        last_only: bool = False,
        return_hidden: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Write tokens' keys/values at start_pos.. and return fp32 logits [T, vocab] ([1, vocab] if last_only).

        tokens: [1, T] or [T] token ids. Positions >= start_pos+T in the cache are neither read nor kept.
        With `return_hidden`, returns `(logits, hidden)`: hidden is the final-norm hidden state [1, T, dim]
        (model dtype) of the same positions as the logits — what a draft head reads.
        A step size that `compile_steps` compiled runs the compiled static-shape step; others run eagerly.
        """
        tokens = tokens.reshape(1, -1).to(self.device)
        T = tokens.shape[1]
        if T == 0:
            raise ValueError("forward needs at least one token")
        if start_pos < 0 or start_pos + T > cache.max_len:
            raise ValueError(f"positions {start_pos}..{start_pos + T} do not fit a cache of {cache.max_len}")
        with self.lock, torch.inference_mode():
            compiled = self.compiled
            if compiled is not None and T in compiled.sizes:
                logits, hidden = compiled(tokens, start_pos, cache)
                if last_only:
                    logits, hidden = logits[-1:], hidden[:, -1:]
            else:
                logits, hidden = self.run(tokens, start_pos, cache.k, cache.v, cache, last_only)
            return (logits, hidden) if return_hidden else logits
