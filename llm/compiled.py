"""`torch.compile` of the static-shape decode step (inductor, weights frozen as constants).

The step is the model's own forward (`Transformer.run`) with the position as a tensor, so one compiled
graph serves every position: RoPE rows are gathered, keys/values written with `index_copy_`, attention
reads the whole cache under a mask. Inductor fuses the elementwise work around the matmuls (norms, RoPE,
SiLU·up, residuals) and, with `freezing`, treats the weights as constants (bf16 weights prepacked for
oneDNN). Graphs specialise on the step size and the cache length; `sizes` says which step sizes go
through the compiled path (1: decode steps), every other call runs eagerly.

Optional by design (`llm.compile`): a compile failure logs a warning and the model stays eager.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class CompiledSteps:
    """Compiled static steps of one model for the step sizes in `sizes` (call: tokens, int position, cache)."""

    def __init__(self, model, sizes: tuple[int, ...] = (1,)) -> None:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        self.model = model
        self.sizes = frozenset(sizes)
        self.compile_s = 0.0
        self._warm: set[tuple[int, int]] = set()  # (size, cache length) already compiled
        self._fn = torch.compile(self._step, fullgraph=True, dynamic=False)

    def _step(self, tokens: Tensor, start: Tensor, cache) -> tuple[Tensor, Tensor]:
        return self.model.run(tokens, start, cache.k, cache.v, cache)

    def __call__(self, tokens: Tensor, start_pos: int, cache) -> tuple[Tensor, Tensor]:
        start = torch.tensor([start_pos], dtype=torch.long, device=tokens.device)
        key = (tokens.shape[1], cache.max_len)
        if key in self._warm:
            return self._fn(tokens, start, cache)
        began = time.perf_counter()
        try:
            out = self._fn(tokens, start, cache)
        except Exception as exc:  # a compiler that cannot build here: stay eager, say so once
            log.warning("torch.compile of the decode step failed (%s); running eagerly", exc)
            self.model.compiled = None
            return self.model.run(tokens, start_pos, cache.k, cache.v, cache)
        self._warm.add(key)
        self.compile_s += time.perf_counter() - began
        log.info("compiled the %d-token step for a %d-position cache in %.1f s", *key, self.compile_s)
        return out

    def warm_up(self, cache_len: int) -> None:
        """Compile every size for caches of `cache_len` positions now (not at the first reply)."""
        cache = self.model.new_cache(cache_len)
        with self.model.lock, torch.inference_mode():
            for size in sorted(self.sizes):
                self(torch.zeros((1, size), dtype=torch.long, device=self.model.device), 0, cache)


def compile_steps(model, sizes: tuple[int, ...] = (1,), warm_cache_len: int | None = None) -> CompiledSteps:
    """Route `model`'s steps of the given sizes through `torch.compile`; optionally compile them now."""
    model.compiled = CompiledSteps(model, sizes)
    if warm_cache_len:
        model.compiled.warm_up(warm_cache_len)
    return model.compiled
