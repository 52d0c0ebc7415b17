"""`specvoice bench voice`: its questions (other voices, real pauses of room tone, noise at a given SNR) and a
quick end-to-end run whose report must be complete and self-consistent. No timing assertions: speed is what
the bench measures, not what a test asserts."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conv_helpers import check_stages

from app.config import ConversationConfig
from bench import voice as bench_voice
from bench.voice_questions import (
    LEAD_MS,
    PAUSE_RANGE_MS,
    RATE,
    ROOM_TONE_DBFS,
    SPEECH_RMS_DBFS,
    VOICES,
    build_questions,
    load_texts,
    plan,
    select,
)

needs_voices = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason="espeak-ng and flite are not installed (scripts/system-deps.sh)",
)


def dbfs(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def test_question_set_is_large_enough_and_not_in_the_assistants_voice():
    texts = load_texts()
    assert len(texts) >= 30 and sum(len(t) == 2 for t in texts) >= 15
    assert all(len(t) in (1, 2) and all(t) for t in texts)
    assert len({" ".join(t) for t in texts}) == len(texts)
    assert {engine for engine, _, _ in VOICES} == {"espeak-ng", "flite"}  # never Piper
    assert not {voice for engine, voice, _ in VOICES if engine == "flite"} & {
        "rms",
        "awb",
    }  # the rule's training voices


@needs_voices
def test_paused_questions_have_room_tone_pauses_in_range_and_noise_at_the_asked_snr():
    texts = [("What is the", "speed of sound?"), ("Name a big city.",)]
    quiet = build_questions(texts=texts, tail_s=1.0, seed=3)
    noisy = build_questions(texts=texts, snr_db=10.0, tail_s=1.0, seed=3)
    paused, plain = quiet
    assert plain.pause_ms is None and paused.paused
    assert PAUSE_RANGE_MS[0] <= paused.pause_ms <= PAUSE_RANGE_MS[1]
    # The pause is room tone: not digital zero, and about as loud as a quiet room.
    speech = np.abs(paused.audio) > 0.05
    voiced = np.flatnonzero(speech)
    gaps = np.diff(voiced)
    longest = int(gaps.max())
    assert abs(longest - paused.pause_ms * RATE / 1000) < 0.2 * RATE  # the longest silence is the pause
    start = voiced[np.argmax(gaps)] + RATE // 50
    gap = paused.audio[start : start + longest - RATE // 25]
    assert np.count_nonzero(gap) == gap.size and abs(dbfs(gap) - ROOM_TONE_DBFS) < 3
    eos = paused.eos_sample  # speech right up to it, room tone from it on
    assert dbfs(paused.audio[eos - RATE // 100 : eos]) > ROOM_TONE_DBFS + 20
    assert abs(dbfs(paused.audio[paused.eos_sample + RATE // 10 :]) - ROOM_TONE_DBFS) < 3  # the tail too
    # Speech is levelled, and with the same seed the same: the difference is the added noise, at the asked SNR.
    assert abs(dbfs(plain.audio[LEAD_MS * RATE // 1000 : plain.eos_sample]) - SPEECH_RMS_DBFS) < 0.5
    for clean, loud in zip(quiet, noisy, strict=True):
        assert clean.eos_sample == loud.eos_sample
        assert abs(SPEECH_RMS_DBFS - dbfs(loud.audio - clean.audio) - 10.0) < 0.5


def test_the_full_set_spreads_pauses_over_the_range():
    pauses = [p.pause_ms for p in plan() if p.pause_ms is not None]
    assert len(pauses) >= 15 and min(pauses) >= 300 and max(pauses) <= 1200
    assert (
        sum(600 <= p <= 1000 for p in pauses) >= 6
    )  # enough for the 600-1000 ms false-endpoint goal


def test_a_short_run_keeps_plain_and_paused_questions():
    chosen = select(plan(), 4)
    assert [p.pause_ms is None for p in chosen] == [True, False, True, False]
    assert len({p.voice for p in chosen}) == 4


def test_a_configuration_this_build_cannot_express_is_reported_unavailable(monkeypatch):
    monkeypatch.setitem(bench_voice.CONFIGS, "future", {"no_such_setting": 1})
    config, why = bench_voice.conversation_config(ConversationConfig(), "future", 16)
    assert config is None and "no_such_setting" in why
    config, why = bench_voice.conversation_config(ConversationConfig(), "default", 16)
    assert why is None and config.max_reply_tokens == 16 and config.echo_policy == "full_duplex"


def check_report(report: dict, configs: list[str], n_questions: int, n_paused: int) -> None:
    assert list(report["configs"]) == configs
    for name, r in report["configs"].items():
        if not r["available"]:
            assert r["reason"]
            continue
        assert r["questions"] == n_questions == len(r["per_question"])
        assert r["answered"] >= 1, name
        fe = r["false_endpoints"]
        assert fe["paused_questions"] == n_paused and 0 <= fe["paused"] <= n_paused
        assert 0 <= fe["pause_600_1000"] <= fe["pause_600_1000_questions"] <= n_paused
        assert 0 <= r["fragment_replies_heard"] <= n_questions
        assert 0.0 <= r["wer"] < 1.0, name  # it heard the questions
        eos, ep = r["eos_to_audio_ms"], r["endpoint_to_audio_ms"]
        assert eos["n"] == r["answered"] and eos["min"] <= eos["p50"] <= eos["p95"] <= eos["max"]
        for q in r["per_question"]:
            if (
                q["eos_to_audio_ms"] is not None
                and q["endpoint_to_audio_ms"] is not None
                and not q["false_endpoints"]
            ):
                assert q["endpoint_to_audio_ms"] <= q["eos_to_audio_ms"], (
                    name,
                    q,
                )  # the endpoint follows eos
        assert ep["n"] <= eos["n"]
    points = {p["config"] for p in report["curve"]}
    assert points == {n for n, r in report["configs"].items() if r["available"] and r["answered"]}


@pytest.mark.slow
async def test_quick_bench_runs_end_to_end_and_its_numbers_are_consistent(assistant, tmp_path):
    questions = build_questions(limit=2, tail_s=16.0)
    configs = ["default", "baseline"]
    report = await bench_voice.run_bench(assistant, configs, questions, "direct", max_tokens=12, wait_s=15.0,
                                         log=lambda *_: None)  # fmt: skip
    assert all(r["available"] for r in report["configs"].values()), report["configs"]
    check_report(report, configs, 2, 1)
    assert (
        report["configs"]["default"]["effective_settings"]["hangover_ms"]
        == assistant.config.conversation.hangover_ms
    )
    for q in report["configs"]["default"]["per_question"]:
        if q["eos_to_audio_ms"] is not None and q["stages"].get("preemptive") == 1.0:
            check_stages(q["stages"])
    svg = tmp_path / "curve.svg"
    bench_voice.write_svg(report["curve"], svg)
    assert ET.parse(svg).getroot().tag.endswith("svg")
    png = tmp_path / "curve.png"
    if bench_voice.write_png(report["curve"], png):  # matplotlib (the `bench` extra) is installed
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
async def test_realtime_transport_measures_through_the_server(assistant):
    questions = build_questions(limit=1, tail_s=16.0)
    report = await bench_voice.run_bench(assistant, ["fixed_600"], questions, "realtime", max_tokens=12,
                                         wait_s=15.0, log=lambda *_: None)  # fmt: skip
    r = report["configs"]["fixed_600"]
    if not r["available"] and r["reason"].startswith("ConversationConfig has no"):
        pytest.skip(r["reason"])  # this build has no fixed endpointing
    assert r["available"], r["reason"]
    check_report(report, ["fixed_600"], 1, 0)
    assert r["effective_settings"]["hangover_ms"] == 600  # the server really used the configuration
    assert report["settings"]["transport"] == "realtime"
    # The heard reply's stages come through too (read in-process from the server's conversation).
    q = r["per_question"][0]
    if q["eos_to_audio_ms"] is not None:
        check_stages(q["stages"])
        assert set(r["stages_ms"]) >= {
            "eos_to_transcript_ms",
            "eos_to_first_token_ms",
            "eos_to_first_audio_ms",
        }


def test_bench_questions_are_not_in_any_training_or_calibration_text():
    """The turn-taking rule is fitted (and the draft head trained) on sentences of their own: none of the
    bench's questions, nor the content half of a paused one (openings like 'What is the best way to' are common
    English), may appear in those scripts' texts (scripts/, asr/data/). Another bench may share a question:
    nothing is fitted on a bench."""
    root = Path(bench_voice.__file__).resolve().parents[1]

    def norm(text: str) -> str:
        return " ".join(re.sub(r"[^\w ]", " ", text.lower()).split())

    sources = [
        *sorted((root / "scripts").glob("*.py")),
        *sorted((root / "asr" / "data").glob("*")),
    ]
    corpus = {p.name: norm(p.read_text(errors="ignore")) for p in sources if p.is_file()}
    for parts in load_texts():
        for text in [" ".join(parts), *(parts[1:] if len(parts[-1].split()) >= 4 else [])]:
            for name, body in corpus.items():
                assert norm(text) not in body, (text, name)
