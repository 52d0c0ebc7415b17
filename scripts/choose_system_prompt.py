"""Choose the default system prompt on a development set of voice questions; report refusals on a held-out set.

A small model told it is "a voice assistant" tends to answer "as a voice assistant, I'm unable to ..." to
ordinary requests (recommend a book, cancel an order). This script scores candidate system prompts with the
default model (SmolLM2-135M, greedy, up to 48 tokens) by the share of replies that refuse or dodge, chooses
on `dev` only (fewest refusals, then fewest replies cut off at the token cap, then the shorter replies:
they are spoken aloud), and then reports the share on `heldout` for the old default, the chosen prompt and
the neutral one-line prompt. Questions: scripts/data/reply_questions.json (disjoint from bench llm's
prompts and bench voice's questions). The refusal check is a list of rules, not a model.

Run: .venv/bin/python scripts/choose_system_prompt.py [--json PATH] [--limit N]   (~10-20 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

QUESTIONS = Path(__file__).resolve().parent / "data" / "reply_questions.json"
MAX_TOKENS = 48
OLD_DEFAULT = (
    "You are a friendly voice assistant. Your replies are spoken aloud, so answer in one or two short, "
    "plain sentences. Never use lists, markdown, emoji or code."
)
NEUTRAL = "You are a helpful assistant. Answer briefly."
CANDIDATES = [
    OLD_DEFAULT,
    NEUTRAL,
    "You are a helpful assistant. Answer the question directly in one or two short sentences.",
    "You are a helpful assistant. Give a direct, practical answer in one or two short sentences.",
    "You are a helpful, knowledgeable assistant. Always give a concrete suggestion or fact, in one or two "
    "short, plain sentences.",
    "You are a helpful assistant talking with someone. Give a direct, useful answer in one or two short, "
    "plain sentences, without lists or markdown.",
]

# A reply that declines or deflects a question it could have answered.
REFUSAL_PATTERNS = [
    r"\bas an? (?:[\w-]+ ){0,2}(?:ai|artificial intelligence|language model|assistant|chatbot)\b",
    r"\bsorry for (?:any|the) confusion\b",
    r"\bi(?:'m| am) (?:unable|not able|not capable|incapable)\b",
    r"\bi (?:can't|cannot|can not|won't be able|will not be able)\b",
    r"\bi (?:don't|do not) have (?:access|the ability|the capability|real-time|personal|any way|the means)\b",
    r"\bi(?:'m| am) (?:just|only) an?\b",
    r"\bi(?:'m| am) (?:sorry|afraid),? (?:but )?i\b",
    r"\b(?:unfortunately|sorry),? i\b",
    r"\bbeyond my (?:capabilities|abilities)\b",
    r"\bi (?:don't|do not) know\b",
    r"\bnot (?:able|possible) for me\b",
]
_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)


def refuses(reply: str) -> bool:
    """True when the reply declines or dodges (rule-based; straight and curly apostrophes alike)."""
    return bool(_REFUSAL.search(reply.replace("\u2019", "'")))


def generate(engine, system_prompt: str, questions: list[str], log) -> list[dict]:
    """Greedy replies, one fresh session per question (the default model, as `specvoice reply` uses it)."""
    rows = []
    for question in questions:
        session = engine.session(system_prompt=system_prompt)
        session.add_turn(question)
        tokens, parts = 0, []
        for delta in session.generate(max_tokens=MAX_TOKENS):
            parts.append(delta.text)
            tokens += 1
        reply = "".join(parts).strip()
        rows.append({"question": question, "reply": reply, "refuses": refuses(reply),
                     "capped": session.finish_reason == "length"})  # fmt: skip
        log(f"    {'REFUSES ' if rows[-1]['refuses'] else ''}{question!r} -> {reply!r}")
    return rows


def score(rows: list[dict]) -> dict:
    n = len(rows)
    return {
        "refusals": sum(r["refuses"] for r in rows),
        "questions": n,
        "refusal_share": round(sum(r["refuses"] for r in rows) / n, 3) if n else None,
        "capped": sum(r["capped"] for r in rows),
        "mean_words": round(sum(len(r["reply"].split()) for r in rows) / n, 1) if n else None,
    }


def choose(dev_scores: list[dict]) -> int:
    """Fewest refusals on dev, then fewest replies cut at the cap, then the shortest replies."""
    return min(range(len(dev_scores)), key=lambda i: (dev_scores[i]["refusals"], dev_scores[i]["capped"],
                                                      dev_scores[i]["mean_words"]))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="PATH", help="write the scores and every reply as JSON")
    parser.add_argument("--limit", type=int, help="use only the first N questions of each set (a smoke run)")
    args = parser.parse_args(argv)

    from app.assistant import load_engine
    from app.config import DEFAULT_SYSTEM_PROMPT, load_config
    from app.profiles import resolve_profile

    sets = json.loads(QUESTIONS.read_text())
    dev, heldout = sets["dev"][: args.limit], sets["heldout"][: args.limit]
    config = load_config(environ={})
    started = time.perf_counter()
    engine = load_engine(resolve_profile(config), config, offline=True)
    print(f"model loaded in {time.perf_counter() - started:.1f}s; {len(CANDIDATES)} candidates, "
          f"{len(dev)} dev / {len(heldout)} held-out questions, greedy, {MAX_TOKENS} tokens")  # fmt: skip
    log = print
    report: dict = {"max_tokens": MAX_TOKENS, "candidates": []}
    for i, prompt in enumerate(CANDIDATES):
        print(f"\n[dev] candidate {i}: {prompt!r}")
        rows = generate(engine, prompt, dev, log)
        report["candidates"].append({"prompt": prompt, "dev": score(rows), "dev_replies": rows})
    best = choose([c["dev"] for c in report["candidates"]])
    chosen = CANDIDATES[best]
    report["chosen"] = chosen
    report["heldout"] = {}
    scored: dict[str, dict] = {}  # by prompt: the chosen one may be the old default or the neutral one
    for label, prompt in (("old_default", OLD_DEFAULT), ("chosen", chosen), ("neutral", NEUTRAL)):
        if prompt not in scored:
            print(f"\n[held-out] {label}: {prompt!r}")
            rows = generate(engine, prompt, heldout, log)
            scored[prompt] = {"prompt": prompt, **score(rows), "replies": rows}
        report["heldout"][label] = scored[prompt]
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["current_default_is_chosen"] = DEFAULT_SYSTEM_PROMPT == chosen

    print(f"\n{'prompt':60s}{'dev refusals':>14s}{'capped':>8s}{'words':>7s}")
    for i, c in enumerate(report["candidates"]):
        mark = "*" if i == best else " "
        print(f"{mark}{c['prompt'][:58]:59s}{c['dev']['refusals']:>8d}/{c['dev']['questions']:<5d}"
              f"{c['dev']['capped']:>8d}{c['dev']['mean_words']:>7.1f}")  # fmt: skip
    print("\nheld-out refusal share:")
    for label, s in report["heldout"].items():
        print(
            f"  {label:12s}{s['refusals']:>3d}/{s['questions']}  ({s['refusal_share']:.0%})  {s['prompt']!r}"
        )
    print(f"\nchosen: {chosen!r}" + ("" if report["current_default_is_chosen"] else
                                       "\n(app/config.py DEFAULT_SYSTEM_PROMPT is not this prompt)"))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
