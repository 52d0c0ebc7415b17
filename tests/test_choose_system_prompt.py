"""scripts/choose_system_prompt.py: the rule-based refusal check, and question sets kept apart (no model)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chooser():
    spec = importlib.util.spec_from_file_location(
        "choose_system_prompt", ROOT / "scripts" / "choose_system_prompt.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "reply",
    [
        "As a voice assistant, I'm unable to book tables for you.",
        "I'm sorry for any confusion, but as a helpful AI, I can only suggest books.",
        "I don\u2019t have access to your order history.",
        "I cannot help with that request.",
        "Unfortunately, I am not able to browse the internet.",
        "I'm just a computer program, so I have no favourite books.",
    ],
)
def test_refusals_and_dodges_are_caught(chooser, reply):
    assert chooser.refuses(reply)


@pytest.mark.parametrize(
    "reply",
    [
        "Try The Hobbit by J.R.R. Tolkien: it's short, warm and full of adventure.",
        "Restart your router, then move closer to it; if it still drops, change the wifi channel.",
        "Open the shop's app, go to Orders, pick the order and tap Cancel; if you can, do it before it ships.",
        "Sure, which restaurant and what time would you like?",
    ],
)
def test_useful_answers_pass(chooser, reply):
    assert not chooser.refuses(reply)


def test_question_sets_are_large_enough_and_disjoint_from_each_other_and_the_benches(chooser):
    sets = json.loads(chooser.QUESTIONS.read_text())
    dev, heldout = sets["dev"], sets["heldout"]
    assert len(dev) >= 20 and len(heldout) >= 20

    def norm(text: str) -> str:
        return " ".join(re.sub(r"[^\w ]", " ", text.lower()).split())

    assert not {norm(q) for q in dev} & {norm(q) for q in heldout}
    from bench.llm import PROMPTS
    from bench.voice_questions import load_texts

    others = {norm(p) for p in PROMPTS} | {norm(" ".join(parts)) for parts in load_texts()}
    assert not ({norm(q) for q in dev + heldout} & others)


def test_the_default_system_prompt_is_one_the_script_scored(chooser):
    from app.config import DEFAULT_SYSTEM_PROMPT

    assert DEFAULT_SYSTEM_PROMPT in chooser.CANDIDATES
    assert chooser.NEUTRAL in chooser.CANDIDATES and chooser.OLD_DEFAULT in chooser.CANDIDATES
