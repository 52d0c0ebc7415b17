"""`specvoice bench tools`: the argument checks and the threshold calibration (pure), and a 2-command smoke run
with the real default models (Whisper, SmolLM2, Piper) and an espeak-ng/flite voice."""

from __future__ import annotations

import shutil

import pytest

from bench.tools_score import (
    Command,
    calibrate_threshold,
    check_argument,
    failed_arguments,
    load_commands,
    normalise,
)
from llm.tool_format import utterance_numbers


def test_the_command_sets_are_apart_and_big_enough():
    scenarios, splits = load_commands()
    assert len(splits["test"]) >= 30 and len(splits["dev"]) >= 15
    assert not {c.text for c in splits["dev"]} & {c.text for c in splits["test"]}
    assert any(c.tool is None for c in splits["test"]), "some turns must not be calls"
    assert {c.scenario for c in splits["dev"] + splits["test"]} <= set(scenarios)


def test_argument_checks_normalise_case_punctuation_and_number_words():
    assert normalise("Sam's FORTIETH, birthday!") == "sam 40 birthday"
    assert normalise("order 4,172") == "order 4172"
    assert check_argument("maria", "Maria.") and not check_argument("maria", "Mario")
    assert check_argument({"any": ["40", "birthday"]}, "fortieth") and not check_argument(
        {"any": ["40"]}, "4"
    )
    assert check_argument(4172, "4172") and check_argument(1, "one") and not check_argument(1, True)
    assert check_argument({"hour": 19}, "seven") and check_argument({"hour": 19}, 19)
    assert not check_argument({"hour": 19}, "seven in the morning")
    assert not check_argument({"nonempty": True}, " ... ")
    assert failed_arguments({"name": "tom", "answer": "yes"}, {"name": "Tom"}) == ["answer"]


def test_threshold_calibration_separates_what_it_can():
    assert calibrate_threshold([0.001, 0.002, 0.01, 0.02], [False, False, True, True]) == pytest.approx(
        (0.002 * 0.01) ** 0.5
    )
    p, calls = [0.001, 0.003, 0.002, 0.02], [False, False, True, True]  # not separable: the best misses one
    t = calibrate_threshold(p, calls)
    assert sum((x >= t) == s for x, s in zip(p, calls, strict=True)) == 3


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("flite") is None,
                    reason="espeak-ng and flite (scripts/system-deps.sh)")  # fmt: skip
def test_smoke_run_on_two_spoken_commands(assistant):
    from bench.tools import run_bench

    scenarios, _ = load_commands()
    question = Command("dev", 0, "events", "What is the capital of France?", None)
    call = Command("test", 0, "support", "Where is my order 3817?", "lookup_order", {"order_number": 3817})
    report = run_bench(assistant, ["listing_spans"], {"dev": [question], "test": [call]}, scenarios,
                       log=lambda *_: None, warm_up=False)  # fmt: skip
    run = report["test"]["listing_spans"]
    trial = next(t for t in run["trials"] if t["expected_tool"])
    assert trial["tool"] in ("lookup_order", "transfer_call", "end_call")
    if trial["tool"] == "lookup_order" and utterance_numbers(trial["transcript"]):
        assert trial["arguments"]["order_number"] in utterance_numbers(trial["transcript"])  # a number heard
    timings = run["summary"]["timings_ms"]
    assert timings["asr_ms"]["n"] == 1 and timings["first_audio_ms"]["p50"] >= timings["tool_call_ms"]["p50"]
    assert run["summary"]["decision"]["n"] == 1 and 0 <= run["summary"]["threshold"] <= 1
    assert report["dev"]["listing_spans"]["trials"][0]["tool"] is None  # a question: no call is written
