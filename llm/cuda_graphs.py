"""CUDA graphs for the two hot shapes: the draft's 1-token step and the target's (k+1)-token verify.

A decode step of a small model is dominated by kernel-launch overhead (hundreds of launches of tiny
kernels); replaying a captured CUDA graph removes it. A graph replays fixed addresses and fixed shapes, so
`static_forward` re-states `llm.model.Transformer.forward` with the position as a *device tensor*: RoPE
rows are gathered, keys/values are written with `index_copy_`, and attention reads the whole static cache
with a mask from that tensor (`kernels.attention.verify_attention`). Rolling back is still just a smaller
position on the next call.

`GraphedModel` wraps a Transformer with the same call signature (`model(tokens, cache, start_pos)`), so the
engine and drafters can use it unchanged: a call with T tokens uses the smallest captured size ≥ T, padding
with dummy tokens whose keys land *past* the valid positions (never read before being overwritten —
the static cache's rollback rule), and falls back to the eager forward for other shapes or near the end of
the cache. On CPU the same static path runs eagerly (that is how the tests check it).
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from kernels.attention import verify_attention


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def static_forward(model, tokens: Tensor, start: Tensor, cache, *, backend: str = "auto") -> Tensor:
    """`model.forward(tokens, cache, start)` with `start` a 1-element int64 tensor: fp32 logits [T, vocab].

    Mirrors llm.model's Block/Attention forward (pre-norm, RoPE on concatenated halves, GQA attention
    over the static cache); the tests check it against `model.forward` at several positions.
    """
    tokens = tokens.reshape(1, -1)
    t = tokens.shape[1]
    positions = start.reshape(1) + torch.arange(t, device=tokens.device)
    cos = model.rope_cos.index_select(0, positions)
    sin = model.rope_sin.index_select(0, positions)
    x = model.embed_tokens(tokens)
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(1, t, attn.n_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(1, t, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(1, t, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        cache.k[i].index_copy_(2, positions, k.to(cache.k[i].dtype))
        cache.v[i].index_copy_(2, positions, v.to(cache.v[i].dtype))
        y = verify_attention(q, cache.k[i], cache.v[i], start, backend=backend)
        x = x + attn.o_proj(y.transpose(1, 2).reshape(1, t, attn.n_heads * attn.head_dim))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(model.norm(x))[0].float()


class GraphedStep:
    """One captured forward of T tokens for one (model, cache). Call with tokens and an int position."""

    def __init__(
        self, model, cache, size: int, *, use_graph: bool | None = None, backend: str = "auto"
    ) -> None:
        if not 1 <= size <= cache.max_len:
            raise ValueError(f"step size {size} does not fit a cache of {cache.max_len}")
        self.model, self.cache, self.size, self.backend = model, cache, size, backend
        device = model.device
        self.use_graph = device.type == "cuda" if use_graph is None else use_graph
        self.tokens = torch.zeros((1, size), dtype=torch.long, device=device)
        # warm-up and capture write keys at the very end of the cache: past any valid position
        self.start = torch.full((1,), cache.max_len - size, dtype=torch.long, device=device)
        self.graph = None
        self.logits: Tensor | None = None
        if self.use_graph:
            self._capture()

    def _run(self) -> Tensor:
        return static_forward(self.model, self.tokens, self.start, self.cache, backend=self.backend)

    def _capture(self) -> None:
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # compile Triton kernels and settle allocations outside the graph
                    self._run()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self._run()

    def __call__(self, tokens: Tensor, start_pos: int) -> Tensor:
        """Logits [T, vocab] for T ≤ size tokens at start_pos (padded rows are computed and dropped)."""
        tokens = tokens.reshape(-1)
        t = tokens.shape[0]
        if not 1 <= t <= self.size or start_pos < 0 or start_pos + self.size > self.cache.max_len:
            raise ValueError(
                f"{t} tokens at {start_pos} do not fit this step ({self.size} of {self.cache.max_len})"
            )
        with torch.inference_mode():
            self.tokens[0, :t].copy_(tokens, non_blocking=True)
            if t < self.size:
                self.tokens[0, t:].fill_(0)
            self.start.fill_(start_pos)
            if self.graph is not None:
                self.graph.replay()
                logits = self.logits
            else:
                logits = self._run()
            return logits[:t].clone()


class GraphedModel:
    """A Transformer whose hot step sizes replay CUDA graphs; same call signature, other attributes
    (args, new_cache, dtype, device, lock...) are the model's."""

    def __init__(
        self, model, sizes: tuple[int, ...] = (1,), *, use_graph: bool | None = None, backend: str = "auto"
    ):
        self.model = model
        self.sizes = tuple(sorted(set(sizes)))
        self.use_graph = use_graph
        self.backend = backend
        self._steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # cache -> {size: GraphedStep}

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def step_for(self, cache, t: int, start_pos: int) -> GraphedStep | None:
        size = next((s for s in self.sizes if s >= t), None)
        if size is None or start_pos + size > cache.max_len:
            return None
        steps = self._steps.setdefault(cache, {})
        if size not in steps:
            steps[size] = GraphedStep(self.model, cache, size, use_graph=self.use_graph, backend=self.backend)
        return steps[size]

    def __call__(self, tokens: Tensor, cache, start_pos: int, *, last_only: bool = False) -> Tensor:
        tokens = tokens.reshape(-1).to(self.model.device)
        step = self.step_for(cache, tokens.shape[0], start_pos)
        if step is None:
            return self.model(tokens, cache, start_pos, last_only=last_only)
        with self.model.lock:
            logits = step(tokens, start_pos)
        return logits[-1:] if last_only else logits
