"""A trained draft head (EAGLE-style) for a target with no smaller sibling: one decoder layer that reads the
target's own last hidden state.

Why: prompt lookup only helps when a reply echoes the conversation, and SmolLM2-135M has no smaller model
with its tokenizer. The target's final hidden state already "knows" the next token; a single extra layer
that sees that state plus the embedding of the token that followed can guess the token after, and can be
chained for k tokens by feeding its own predicted state back in. One step costs about 1/30 of a target
forward (one layer instead of 30, and a 4k-row output matrix instead of 49k).

Shape of it (all target weights shared, nothing but the layer below is stored):
- entry p of the head's sequence reads (h_p, x_{p+1}): the target's final-norm hidden state at position p
  and the embedding (the target's `embed_tokens`) of the token at p+1; `fc` fuses the two into one vector,
  one pre-norm decoder layer (attention over the head's own per-session cache + MLP) and a norm make
  a predicted state f_{p+1}, trained to match h_{p+1};
- logits over the reduced draft vocabulary (the few thousand most frequent tokens of the target's own
  replies) are f @ W[draft_vocab]ᵀ with W the target's output matrix; the draft distribution q is then put
  back on the full vocabulary with zeros elsewhere, so the lossless acceptance rule (llm/sampling.py) and
  the target's verify over all 49,152 tokens are unchanged.

`HeadDrafter` keeps one session's state: the target's hidden states it was shown (`observe`, called by the
engine after every prefill chunk and verify) and the head's KV cache; like the target's cache, it rolls back
by a position pointer. Weights ship in llm/data/ with a sha256 in the metadata (checked at load);
scripts/train_draft_head.py regenerates them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llm.drafters import Draft, common_prefix
from llm.model import Transformer
from llm.sampling import SamplingParams, probabilities, sample

DATA = Path(__file__).parent / "data"
WEIGHTS = DATA / "draft_head.safetensors"
METADATA = DATA / "draft_head.json"


class DraftHeadError(RuntimeError):
    """A missing, corrupt or mismatched draft-head file."""


@dataclass(frozen=True)
class HeadConfig:
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float
    norm_eps: float
    vocab_size: int  # the target's
    draft_vocab_size: int

    @classmethod
    def for_target(cls, target: Transformer, draft_vocab_size: int, intermediate_size: int | None = None):
        a = target.args
        return cls(a.dim, a.n_heads, a.n_kv_heads, a.head_dim, intermediate_size or a.intermediate_size,
                   a.rope_theta, a.norm_eps, a.vocab_size, draft_vocab_size)  # fmt: skip


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class DraftHead(nn.Module):
    """fc([embedding; hidden]) -> one pre-norm decoder layer -> norm. Batched [B, T, dim] in, [B, T, dim] out."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        c = self.config = config
        self.fc = nn.Linear(2 * c.dim, c.dim, bias=False)
        self.input_norm = nn.RMSNorm(c.dim, eps=c.norm_eps)
        self.q_proj = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)
        self.post_norm = nn.RMSNorm(c.dim, eps=c.norm_eps)
        self.gate_proj = nn.Linear(c.dim, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.dim, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.dim, bias=False)
        self.out_norm = nn.RMSNorm(c.dim, eps=c.norm_eps)
        self.register_buffer("draft_vocab", torch.zeros(c.draft_vocab_size, dtype=torch.long))
        self._rope: tuple[Tensor, Tensor] | None = None

    def rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin [T, head_dim] for integer positions (the table is built once and grown on demand)."""
        c, needed = self.config, int(positions.max()) + 1
        if self._rope is None or self._rope[0].shape[0] < needed:
            size = max(4096, 2 * needed)
            inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
            freqs = torch.arange(size, dtype=torch.float32)[:, None] * inv_freq[None]
            emb = torch.cat((freqs, freqs), dim=-1)
            self._rope = emb.cos(), emb.sin()
        return self._rope[0][positions], self._rope[1][positions]

    def qkv(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rotary q, k, v for inputs x [B, T, dim] at `positions` [T]: [B, heads, T, head_dim]."""
        c, (B, T, _) = self.config, x.shape
        h = self.input_norm(x)
        q = self.q_proj(h).view(B, T, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        cos, sin = self.rope(positions.cpu())
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v

    def finish(self, x: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Attention of q over (k, v) with a boolean mask, then the MLP and the output norm."""
        B, _, T, _ = q.shape
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        x = x + self.o_proj(y.transpose(1, 2).reshape(B, T, -1))
        h = self.post_norm(x)
        x = x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
        return self.out_norm(x)

    def fuse(self, hidden: Tensor, embedded: Tensor) -> Tensor:
        return self.fc(torch.cat([embedded, hidden], dim=-1))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_head(head: DraftHead, weights: Path, metadata: Path, extra: dict) -> dict:
    """Write the weights (fp32 safetensors) and the metadata with their sha256; returns the metadata."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(weights))
    meta = {"config": asdict(head.config), "weights": weights.name, "sha256": file_sha256(weights),
            "bytes": weights.stat().st_size, "draft_vocab": head.draft_vocab.tolist(), **extra}  # fmt: skip
    metadata.write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def load_head(target: Transformer, metadata: Path | str = METADATA) -> DraftHead:
    """Load and check the shipped head: the file's sha256 must match the metadata, and its shapes the target."""
    from safetensors.torch import load_file

    metadata = Path(metadata)
    if not metadata.is_file():
        raise DraftHeadError(f"no draft head metadata at {metadata}: run scripts/train_draft_head.py")
    meta = json.loads(metadata.read_text())
    weights = metadata.parent / meta["weights"]
    if not weights.is_file():
        raise DraftHeadError(f"draft head weights {weights} are missing: run scripts/train_draft_head.py")
    digest = file_sha256(weights)
    if digest != meta["sha256"]:
        raise DraftHeadError(
            f"draft head weights {weights} are corrupt or truncated: sha256 {digest[:16]}… "
            f"!= {meta['sha256'][:16]}… in {metadata.name} ({weights.stat().st_size} of {meta.get('bytes')} bytes)"
        )
    config = HeadConfig(**meta["config"])
    a = target.args
    if (config.dim, config.vocab_size, config.head_dim) != (a.dim, a.vocab_size, a.head_dim):
        raise DraftHeadError(
            f"the draft head was trained for a target with dim {config.dim}, vocab {config.vocab_size}; "
            f"this target has dim {a.dim}, vocab {a.vocab_size}"
        )
    head = DraftHead(config)
    head.load_state_dict(load_file(str(weights)))
    if head.draft_vocab.tolist() != meta["draft_vocab"]:
        raise DraftHeadError("the draft vocabulary in the weights differs from the metadata's")
    return head.eval().requires_grad_(False)


# How long a chain the head drafts (chosen on the development prompts, scripts/tune_draft_length.py; see
# docs/llm.md): at most MAX_DRAFT tokens, and the chain stops before a token once the product of the head's
# own top probabilities so far (its estimate that the whole chain is accepted) falls below STOP_BELOW. On
# CPU a verify of 2-5 rows costs ~1.3-1.8x a 1-token step and a wrong guess wastes that; on new prompts the
# shipped head's first guess is right ~30 % of the time overall but ~70 % when it is this confident.
MAX_DRAFT = 4
STOP_BELOW = 0.85


class HeadDrafter:
    """One session's draft-head state. Entry p of the head's cache holds (h_p, x_{p+1}) for p in
    [base, n_entries); the target's hidden states for [base, n_hidden) are kept in `hidden`.

    `observe(start, tokens, hidden)` records what the target computed; `prefill(context)` rolls back to the
    common prefix with a changed conversation; `propose` brings the head's cache up to the pending token
    and chains up to k guesses from its own predicted states (written past the pointer, so the next
    `propose` overwrites them), stopping early when its confidence drops (`max_draft`, `stop_below`).

    Lossless with the early stop: whether position i is drafted is decided from the head's distribution at
    i *before* token i is drawn (it depends only on the context and on the drafts already drawn, never on
    the target), and a drafted token is drawn from exactly the q it reports. The acceptance rule then
    makes every emitted token follow the target, whatever the chain length (docs/llm.md).
    """

    name = "head"
    needs_hidden = True

    def __init__(self, head: DraftHead, target: Transformer, max_len: int, *, max_draft: int = MAX_DRAFT,
                 stop_below: float = STOP_BELOW) -> None:  # fmt: skip
        c = head.config
        self.head, self.target, self.max_len = head, target, max_len
        self.max_draft, self.stop_below = max_draft, stop_below
        self.vocab = head.draft_vocab
        with torch.no_grad():  # the target's output rows for the draft vocabulary, once per session (fp32)
            self.out_rows = target.lm_head.weight[self.vocab].float()
        self.tokens: list[int] = []  # tokens at positions [0, n_hidden)
        self.hidden = torch.zeros(max_len, c.dim)
        self.base = self.n_hidden = self.n_entries = 0
        shape = (1, c.n_kv_heads, max_len, c.head_dim)
        self.k, self.v = torch.zeros(shape), torch.zeros(shape)

    # -- state ----------------------------------------------------------------------------------------
    def prefill(self, context: list[int]) -> None:
        """Forget everything past the common prefix with `context` (the conversation changed)."""
        self._truncate(self._common(context))

    def _common(self, context: list[int]) -> int:
        """Common prefix with `context`, counted from `base` (tokens before the window are not kept)."""
        return self.base + common_prefix(self.tokens[self.base :], context[self.base :])

    def _truncate(self, n: int) -> None:
        if n <= self.base:  # the window's first position changed: nothing is left
            self.base = n = min(n, self.base)
        del self.tokens[n:]
        self.n_hidden = min(self.n_hidden, n)
        self.n_entries = min(self.n_entries, max(self.base, n - 1))  # entry n-1 reads token n

    def observe(self, start: int, tokens: list[int], hidden: Tensor) -> None:
        """The target's final-norm hidden states [T, dim] (or [1, T, dim]) for `tokens` at start.."""
        hidden = hidden.reshape(-1, hidden.shape[-1])
        if hidden.shape[0] != len(tokens):
            raise ValueError(f"{len(tokens)} tokens but {hidden.shape[0]} hidden states")
        end = min(start + len(tokens), self.max_len)
        if start > self.n_hidden or start < self.base:  # a gap: the head's window restarts here
            self.base = self.n_hidden = self.n_entries = start
            self.tokens = self.tokens[:start] + [-1] * (start - len(self.tokens))
        self._truncate(start)
        self.tokens[start:] = tokens[: end - start]
        self.hidden[start:end] = hidden[: end - start].float()
        self.n_hidden = end

    # -- drafting -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _step(self, hidden: Tensor, tokens: list[int], start: int) -> Tensor:
        """Head entries at positions start.. from hidden [T, dim] and next tokens; returns states [T, dim]."""
        head = self.head
        embedded = self.target.embed_tokens(torch.tensor(tokens, device=self.target.device)).float().cpu()
        x = head.fuse(hidden, embedded)[None]
        T = len(tokens)
        q, k, v = head.qkv(x, torch.arange(start, start + T))
        self.k[:, :, start : start + T], self.v[:, :, start : start + T] = k, v
        end = start + T
        keys, values = self.k[:, :, self.base : end], self.v[:, :, self.base : end]
        mask = None
        if T > 1:
            rows = torch.arange(start, end)[:, None]
            mask = torch.arange(self.base, end)[None] <= rows
        return head.finish(x, q, keys, values, mask)[0]

    def propose(
        self, context: list[int], k: int, params: SamplingParams, generator: torch.Generator | None = None
    ) -> Draft:
        pending = len(context) - 1
        k = min(k, self.max_draft, self.max_len - len(context))
        self._truncate(self._common(context))
        if k <= 0 or self.n_hidden < pending or pending - 1 < self.base:
            return Draft([])  # the target's state for the token before the pending one is not known yet
        # Bring entries up to date (entry p reads h_p and x_{p+1}; the last one reads the pending token).
        start = min(self.n_entries, pending - 1)
        states = self._step(self.hidden[start:pending], context[start + 1 : pending + 1], start)
        self.n_entries = pending
        state = states[-1]
        tokens: list[int] = []
        rows: list[Tensor] = []
        chain = 1.0  # the head's own estimate that every draft so far is accepted
        for i in range(k):
            logits = state @ self.out_rows.T  # [draft vocab]
            if self.stop_below > 0.0:  # decided before the token is drawn (see the class docstring)
                chain *= float(torch.softmax(logits, -1).max())
                if chain < self.stop_below:
                    break
            if params.greedy:
                token = int(self.vocab[int(logits.argmax())])
            else:
                full = torch.full((self.head.config.vocab_size,), float("-inf"))
                full[self.vocab] = logits
                q = probabilities(full, params)  # zero outside the draft vocabulary
                token = sample(q, generator)
                rows.append(q)
            tokens.append(token)
            if i + 1 < k:  # a tentative entry past the pointer: (predicted state, drafted token)
                state = self._step(state[None], [token], pending + i)[-1]
        return Draft(tokens, torch.stack(rows) if rows else None)
