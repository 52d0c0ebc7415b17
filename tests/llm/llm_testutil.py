"""Shared constants and helpers for the LLM tests (imported by module name; tests/ has no packages)."""

from __future__ import annotations

from llm.model import ModelArgs, Transformer

SYSTEM = "You are a friendly voice assistant. Answer in one or two short sentences."

# >= 20 varied voice-assistant prompts (questions, commands, small talk, echo-friendly ones for n-grams).
PROMPTS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Tell me a short joke about cats.",
    "What's the weather usually like in London in winter?",
    "Can you recommend a good book for a long flight?",
    "How do I boil an egg?",
    "Repeat after me: the quick brown fox jumps over the lazy dog.",
    "What is two plus two?",
    "Who wrote Romeo and Juliet?",
    "Set a timer for ten minutes.",
    "Why is the sky blue?",
    "Translate good morning into Spanish.",
    "What should I cook for dinner tonight?",
    "Spell the word necessary.",
    "How far away is the moon?",
    "Give me one tip to sleep better.",
    "What does a cardiologist do?",
    "Is it healthy to drink coffee every day?",
    "Name three primary colors.",
    "What time zone is New York in?",
    "Summarize the plot of Cinderella in one sentence.",
    "Hello! How are you today?",
]


def tiny_args(vocab_size: int = 64, n_layers: int = 2, dim: int = 32, qkv_bias: bool = False) -> ModelArgs:
    return ModelArgs(
        vocab_size=vocab_size, dim=dim, n_layers=n_layers, n_heads=4, n_kv_heads=2, head_dim=dim // 4,
        intermediate_size=2 * dim, max_positions=4096, tie_embeddings=False, qkv_bias=qkv_bias,
    )  # fmt: skip


def random_model(args: ModelArgs, seed: int, std: float = 0.3) -> Transformer:
    """Random weights with a large std, so the next-token distributions are far from uniform."""
    return Transformer.random(args, seed=seed, std=std)


def exact_two_token_law(target: Transformer, context: list[int], params, vocab: int):
    """p(t1) * p(t2 | t1) from the target alone, flattened over vocab x vocab."""
    import torch

    from llm.sampling import probabilities

    cache = target.new_cache(64)
    p1 = probabilities(target(torch.tensor(context), cache, 0)[-1], params)
    joint = torch.zeros(vocab, vocab)
    for t1 in range(vocab):
        joint[t1] = p1[t1] * probabilities(target(torch.tensor([t1]), cache, len(context))[-1], params)
    return joint.flatten()


def two_token_chi2(target: Transformer, cache, context: list[int], drafter, params, generator, draws: int,
                   vocab: int) -> tuple[float, float, int, float]:  # fmt: skip
    """Draw the first two tokens of `draws` speculative replies from one prefix (the target's cache already
    holds context[:-1]) and compare them with the exact joint law: (chi-square, its critical value at
    significance 1e-4 over cells with expected count >= 5 (Wilson-Hilferty), drafted tokens accepted, draws
    that fell in the rare cells left out of the chi-square)."""
    import math

    import torch

    from llm.engine import speculative_step

    expected = exact_two_token_law(target, context, params, vocab)
    counts, accepted = torch.zeros(vocab * vocab), 0
    for _ in range(draws):
        step = speculative_step(target, cache, context, drafter, 2, params, generator)
        tokens, accepted = step.tokens, accepted + step.accepted
        if len(tokens) == 1:
            tokens = tokens + speculative_step(target, cache, context + tokens, drafter, 2, params, generator).tokens
        counts[tokens[0] * vocab + tokens[1]] += 1
    cells = expected * draws >= 5
    exp_counts = expected[cells] * draws
    chi2 = float(((counts[cells] - exp_counts) ** 2 / exp_counts).sum())
    df = int(cells.sum()) - 1
    c = 2.0 / (9.0 * df)
    return chi2, df * (1.0 - c + 3.719 * math.sqrt(c)) ** 3, accepted, float(counts[~cells].sum())
