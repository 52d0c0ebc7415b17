"""A compact Llama / Qwen2-family decoder with a static KV cache (gpt-fast style).

Why our own model instead of `transformers`: a speculative engine calls the target with 1-token decodes,
16-token prefill chunks and (k+1)-token verifies, and rolls back rejected positions. With a static cache
addressed by a position pointer all of that is one `forward(tokens, cache, start_pos)` and a rollback is
just a smaller `start_pos` next time: entries past the pointer are never read and get overwritten.

Weights are shared: one `Transformer` serves many sessions, each owning a small `KVCache`. Sessions may run
in different threads, so every forward holds the model's lock.

Hooks for the GPU backends (llm/backends.py):
- every projection (q/k/v/o, gate/up/down, lm_head) is a plain `nn.Linear`, so it can be swapped for an
  FP8 linear;
- `RMSNorm` is its own module;
- attention over the cache goes through one function with the signature of `attention` below; a backend
  swaps it per model with `Transformer.set_attention(fn)`.

Module names mirror Hugging Face's (`embed_tokens`, `layers.N.self_attn.q_proj`, ...), so an HF
safetensors state dict loads after stripping its `model.` prefix.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AttentionFn = Callable[[Tensor, Tensor, Tensor, int, int], Tensor]


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
    Query i sits at absolute position start_pos+i and sees positions 0..start_pos+i.
    """
    end = start_pos + T
    k, v = k_cache[:, :, :end], v_cache[:, :, :end]
    mask = None
    if T > 1:
        rows = torch.arange(T, device=q.device).unsqueeze(1) + start_pos
        mask = torch.arange(end, device=q.device).unsqueeze(0) <= rows
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Computed in fp32 like the reference implementation, then cast back.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=args.qkv_bias)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.attention_fn: AttentionFn = attention

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor, start_pos: int
    ) -> Tensor:
        T = x.shape[1]
        q = self.q_proj(x).view(1, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(1, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(1, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k_cache[:, :, start_pos : start_pos + T] = k
        v_cache[:, :, start_pos : start_pos + T] = v
        y = self.attention_fn(q, k_cache, v_cache, start_pos, T)
        return self.o_proj(y.transpose(1, 2).reshape(1, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.dim, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = MLP(args)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, k_cache: Tensor, v_cache: Tensor, start_pos: int
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, start_pos)
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

    def set_attention(self, fn: AttentionFn) -> None:
        """Swap the attention-over-cache function (e.g. a Triton kernel) in every layer."""
        for layer in self.layers:
            layer.self_attn.attention_fn = fn

    def forward(self, tokens: Tensor, cache: KVCache, start_pos: int, *, last_only: bool = False) -> Tensor:
        """Write tokens' keys/values at start_pos.. and return fp32 logits [T, vocab] ([1, vocab] if last_only).

        tokens: [1, T] or [T] token ids. Positions >= start_pos+T in the cache are neither read nor kept.
        """
        tokens = tokens.reshape(1, -1).to(self.device)
        T = tokens.shape[1]
        if T == 0:
            raise ValueError("forward needs at least one token")
        if start_pos < 0 or start_pos + T > cache.max_len:
            raise ValueError(f"positions {start_pos}..{start_pos + T} do not fit a cache of {cache.max_len}")
        with self.lock, torch.inference_mode():
            cos = self.rope_cos[start_pos : start_pos + T]
            sin = self.rope_sin[start_pos : start_pos + T]
            x = self.embed_tokens(tokens)
            for i, layer in enumerate(self.layers):
                x = layer(x, cos, sin, cache.k[i], cache.v[i], start_pos)
            if last_only:
                x = x[:, -1:]
            return self.lm_head(self.norm(x))[0].float()
