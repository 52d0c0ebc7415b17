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
