"""CUDA graphs for the two hot shapes: the draft's 1-token step and the target's (k+1)-token verify.

A decode step of a small model is dominated by kernel-launch overhead (hundreds of launches of tiny
kernels); replaying a captured CUDA graph removes it. A graph replays fixed addresses and fixed shapes, so
`static_forward` runs the model's one forward implementation (`Transformer.run`) with the position as a
*device tensor*: RoPE rows are gathered, keys/values are written with `index_copy_`, and attention reads the
whole static cache with a mask from that tensor (on CUDA `kernels.attention.verify_attention`). Rolling
back is still just a smaller position on the next call.

`GraphedModel` wraps a Transformer with the same call signature (`model(tokens, cache, start_pos)`), so the
engine and drafters can use it unchanged: a call with T tokens uses the smallest captured size ≥ T, padding
with dummy tokens whose keys land *past* the valid positions (never read before being overwritten —
the static cache's rollback rule), and falls back to the eager forward for other shapes or near the end of
the cache. On CPU the same static path runs eagerly (that is how the tests check it).
"""

from __future__ import annotations

import weakref
from functools import partial

import torch
from torch import Tensor

from kernels.attention import verify_attention


def static_forward(model, tokens: Tensor, start: Tensor, cache, *, backend: str = "auto") -> Tensor:
    """`model.forward(tokens, cache, start)` with `start` a 1-element int64 tensor: fp32 logits [T, vocab].

    The model's own forward implementation (`Transformer.run`) in its static-shape form: RoPE rows are
    gathered, keys/values written with `index_copy_`, attention reads the whole cache under a mask built
    from `start`. Attention goes through the model's hook; `backend` picks the verify-attention kernel
    ("auto": Triton on CUDA, the torch reference elsewhere) unless the model already has a hook.
    """
    tokens = tokens.reshape(1, -1)
    hooks = [layer.self_attn.attention_fn for layer in model.layers]
    if all(h is None for h in hooks) and tokens.device.type == "cuda":
        model.set_attention(partial(_kernel_attention, backend=backend))
        try:
            return model.run(tokens, start, cache.k, cache.v, cache)[0]
        finally:
            model.set_attention(None)
    return model.run(tokens, start, cache.k, cache.v, cache)[0]


def _kernel_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, start, T: int, *, backend: str) -> Tensor:
    return verify_attention(q, k_cache, v_cache, start, backend=backend)


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

    def __call__(
        self, tokens: Tensor, cache, start_pos: int, *, last_only: bool = False, return_hidden: bool = False
    ):
        tokens = tokens.reshape(-1).to(self.model.device)
        step = None if return_hidden else self.step_for(cache, tokens.shape[0], start_pos)
        if step is None:  # other sizes, the end of the cache, or hidden states wanted: the eager forward
            return self.model(tokens, cache, start_pos, last_only=last_only, return_hidden=return_hidden)
        with self.model.lock:
            logits = step(tokens, start_pos)
        return logits[-1:] if last_only else logits
