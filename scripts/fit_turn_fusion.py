"""Generate the end-of-turn training set, measure both signals on it, fit the fusion rule.

    .venv/bin/python scripts/fit_turn_fusion.py [--features /tmp/turn_features.jsonl] [--write] [--leave-voice-out]

Training set (made here, never the benchmark's questions, nor the tests' sentences): SENTENCES below, each
spoken complete and cut at a random word boundary, by four voices that `bench voice` does not use -- Piper
joe (the assistant's own voice), flite "rms" and "awb", festival "ked" (Debian's festvox-kdlpc16k) -- with
300 ms of silence before, a pause of
200-1500 ms after the cut (what the speaker would pause before going on; the cut is made in the
complete sentence's audio at a word boundary, see make_clips), and background noise (white or
babble-like brown noise at 10-20 dB SNR) on a third of the clips. For each clip, at the moment the
conversation would ask (the speech plus 96 ms of silence): Smart Turn's P(complete) on the audio, and the
LLM's P(end of turn) after Whisper's transcript of it (short-window decoder, as in the conversation).

Fit: logistic regression (numpy, Newton steps, light L2) of complete vs cut on Smart Turn's clipped logit,
log10 of the text probability and whether Whisper's transcript ended in . ? ! -- for all signals and each
one alone -- on the sentences of the training split (2/3). Thresholds per eagerness (shaping a graded wait,
asr.endpointing.graded_wait) by a grid search on the training split: the shortest mean wait on complete
clips whose expected false-endpoint share on cut clips (P(pause > wait) for pauses uniform over the
bench's 300-1200 ms, and over 600-1000 ms) stays within the eagerness's budget; reported on the held-out
third, per voice, and (--leave-voice-out) for each voice fitted without it. The signals per clip are cached
in --features (seconds to refit); `cache_clips` keeps the clips' audio for asking Smart Turn again.
--write saves asr/data/turn_fusion.json. A features file that lacks a voice of VOICES is extended by
measuring only that voice (its clips have their own seeded random stream, so the other voices' clips
stay as they were).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RATE = 16000
SENTENCES = [
    "Could you set an alarm for seven thirty tomorrow morning?",
    "I need a table for four people at the Italian place downtown.",
    "Please turn off the lights in the living room.",
    "How many ounces are there in a pound?",
    "Send a message to Sarah saying I will be ten minutes late.",
    "What time does the pharmacy on Main Street close tonight?",
    "Add eggs, milk and bread to my shopping list.",
    "Can you recommend a good book about ancient Rome?",
    "I would like to change my flight to Thursday afternoon.",
    "Tell me a joke about penguins.",
    "How long should I boil an egg for a soft yolk?",
    "Start a timer for twenty five minutes.",
    "Which planet has the most moons?",
    "My package was supposed to arrive on Monday but it never came.",
    "Translate good evening into Spanish.",
    "Why do cats purr when they are happy?",
    "Book a doctor's appointment for next Wednesday at noon.",
    "What is the difference between weather and climate?",
    "Remind me to water the plants every Sunday evening.",
    "The heating in my apartment stopped working last night.",
    "How do I reset the password on my laptop?",
    "Play the latest episode of my favourite podcast.",
    "Who wrote the novel Pride and Prejudice?",
    "I am looking for a cheap hotel near the train station.",
    "Can you explain how vaccines train the immune system?",
    "Call the plumber and ask him to come on Friday.",
    "What should I cook for dinner with chicken and rice?",
    "How many steps did I walk yesterday?",
    "Please read me the headlines from this morning.",
    "Is it going to snow in the mountains this weekend?",
    "I want to cancel my subscription to the gym.",
    "Give me directions to the nearest gas station.",
    "What year did the first person walk on the moon?",
    "Turn the volume down a little bit.",
    "How much water should a grown adult drink each day?",
    "Find me a recipe for a chocolate cake without eggs.",
    "My account number is nine eight seven six five.",
    "Let me know when the laundry is done.",
    "Where did I park the car this morning?",
    "Schedule a call with the marketing team for Tuesday.",
    "Can you spell the word necessary for me?",
    "What is the tallest building in the world?",
]
# Piper joe (the assistant's own voice), flite rms and awb, festival ked (a diphone voice, Debian's
# festvox-kdlpc16k): four voices, none of which `bench voice` uses (espeak-ng, flite slt/kal).
VOICES = ("joe", "rms", "awb", "ked")
FIRST_VOICES = 3  # the first fit's voices; later ones draw their randomness from their own stream (below)


# --- clips -------------------------------------------------------------------------------------------
def synth(text: str, voice: str, piper) -> np.ndarray:
    from app.audio import resample, to_float32

    if voice == "joe":
        return resample(to_float32(piper.synthesize_all(text)), piper.sample_rate, RATE)
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "x.wav"
        if voice == "ked":  # festival (text2wave reads the text from a file)
            (Path(tmp) / "x.txt").write_text(text)
            command = ["text2wave", "-eval", "(voice_ked_diphone)", str(Path(tmp) / "x.txt"), "-o", str(wav)]
        else:
            command = ["flite", "-voice", voice, "-t", text, "-o", str(wav)]
        subprocess.run(command, check=True, capture_output=True)
        audio, rate = sf.read(wav, dtype="float32")
    return resample(audio, rate, RATE)


def trim(audio: np.ndarray, floor: float = 2e-3) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > floor)
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio[:0]


def add_noise(audio: np.ndarray, rng: np.random.Generator, snr_db: float, kind: str) -> np.ndarray:
    noise = rng.standard_normal(audio.size)
    if kind == "brown":  # low-frequency rumble, closer to a room with people in it than white noise
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(400) / 400, mode="same")
    speech_power = np.mean(audio[np.abs(audio) > 1e-3] ** 2) if np.any(np.abs(audio) > 1e-3) else 1e-4
    noise *= np.sqrt(speech_power / (10 ** (snr_db / 10)) / np.mean(noise**2))
    return (audio + noise).astype(np.float32)


def cut_point(audio: np.ndarray, words: list, k: int) -> int | None:
    """Sample index of the quietest 10 ms between aligned word k-1 and word k (the word boundary)."""
    if k <= 0 or k >= len(words):
        return None
    lo = int(max(0.0, words[k - 1].end - 0.06) * RATE)
    hi = int(min(audio.size / RATE, words[k].start + 0.06) * RATE)
    if hi - lo < 160:
        return int(words[k - 1].end * RATE)
    frames = [(float(np.mean(audio[i : i + 160] ** 2)), i) for i in range(lo, hi - 160, 80)]
    return min(frames)[1] + 80


def make_clips(transcriber, seed: int = 7, voices: tuple[str, ...] = VOICES) -> list[dict]:
    """Each sentence spoken whole by each voice; the cut clip is the *same audio* cut at a word boundary
    (found by Whisper's word alignment), so it keeps the mid-sentence prosody of a speaker who goes on --
    synthesising the fragment as text would give it a finished sentence's falling pitch.

    The first fit's voices (VOICES[:FIRST_VOICES]) share one seeded stream, as they did then; each voice
    added later draws from its own (`seed` + 1000 + its index), so adding a voice changes no earlier clip
    and a features file can be extended by measuring only the new voice (`--voices`)."""
    from app.profiles import TTS_JOE
    from app.store import fetch
    from tts.piper_voice import Voice

    piper = Voice(fetch(TTS_JOE, progress=False))
    clips: list[dict] = []
    first = VOICES[:FIRST_VOICES]
    if set(first) & set(voices):
        rng = np.random.default_rng(seed)
        for i, sentence in enumerate(SENTENCES):
            cut_at = int(rng.integers(2, len(sentence.split()) - 1))  # >= two words said, >= two to come
            for voice in first:
                clips += _clip_pair(transcriber, piper, rng, i, sentence, voice, cut_at)
        clips = [c for c in clips if c["voice"] in voices]
    for v, voice in enumerate(VOICES[FIRST_VOICES:], FIRST_VOICES):
        if voice not in voices:
            continue
        rng = np.random.default_rng(seed + 1000 + v)
        for i, sentence in enumerate(SENTENCES):
            cut_at = int(rng.integers(2, len(sentence.split()) - 1))
            clips += _clip_pair(transcriber, piper, rng, i, sentence, voice, cut_at)
    return clips


def _clip_pair(transcriber, piper, rng, i: int, sentence: str, voice: str, cut_at: int) -> list[dict]:
    """The complete clip and the cut one (pause, noise drawn from `rng`)."""
    speech = trim(synth(sentence, voice, piper))
    aligned = transcriber.transcribe(speech, word_timestamps=True).words
    cut = cut_point(speech, aligned, min(cut_at, len(aligned) - 1))
    clips = []
    for complete in (True, False):
        if not complete and cut is None:
            continue
        part = speech if complete else speech[:cut]
        tail = 96  # ms of silence when the conversation asks (the first silent VAD frames)
        audio = np.concatenate([np.zeros(int(0.3 * RATE)), part, np.zeros(tail * RATE // 1000)])
        noisy = rng.random() < 1 / 3
        snr = float(rng.uniform(10, 20))
        kind = str(rng.choice(["white", "brown"]))
        if noisy:
            audio = add_noise(audio, rng, snr, kind)
        clips.append({
            "sentence": i, "voice": voice, "complete": complete,
            "text": sentence if complete else " ".join(w.text.strip() for w in aligned[:cut_at]),
            "pause_ms": None if complete else float(rng.uniform(200, 1500)),
            "noise": f"{kind} {snr:.0f} dB" if noisy else None,
            "audio": audio.astype(np.float32),
        })  # fmt: skip
    return clips


# --- signals -----------------------------------------------------------------------------------------
def measure(assistant, clips: list[dict]) -> list[dict]:
    from app.profiles import SMART_TURN
    from app.store import fetch
    from asr.smart_turn import SmartTurn
    from asr.streaming import ShortWindowDecoder

    decoder = ShortWindowDecoder(assistant.transcriber.model)
    smart = SmartTurn(fetch(SMART_TURN, progress=False))
    rows = []
    for n, clip in enumerate(clips):
        transcript = decoder.decode(clip["audio"]).text.strip()
        session = assistant.new_session()
        p_text = session.end_of_turn_probability(transcript) if transcript else 0.0
        p_audio = smart.probability(clip["audio"])
        row = {k: v for k, v in clip.items() if k != "audio"}
        row.update(transcript=transcript, p_audio=p_audio, p_text=p_text)
        rows.append(row)
        if n % 20 == 0:
            print(f"{n}/{len(clips)} {row['voice']} {row['complete']} a={p_audio:.2f} t={p_text:.4f} "
                  f"{transcript!r}", flush=True)
    return rows


def with_tail(audio: np.ndarray, tail_ms: int, made_with_ms: int = 96) -> np.ndarray:
    """The clip as if Smart Turn were asked after `tail_ms` of silence instead of `made_with_ms`: shorter
    by cutting, longer by repeating the clip's own last silence (its noise, if any)."""
    made = made_with_ms * RATE // 1000
    want = tail_ms * RATE // 1000
    if want <= made:
        return audio[: audio.size - made + want]
    last = audio[-made:]
    extra = np.tile(last, want // made + 1)[: want - made]
    return np.concatenate([audio, extra]).astype(np.float32)


def cache_clips(path: Path, transcriber=None) -> list[dict]:
    """The clips with their audio, made once and kept in `path` (.npz audio + .json rows), so that
    Smart Turn can be asked again (other silence tails, other windows) without synthesising and
    aligning again."""
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        rows = json.loads(meta.read_text())
        audio = np.load(path)
        return [{**r, "audio": audio[f"c{n}"]} for n, r in enumerate(rows)]
    clips = make_clips(transcriber)
    np.savez_compressed(path, **{f"c{n}": c["audio"] for n, c in enumerate(clips)})
    meta.write_text(json.dumps([{k: v for k, v in c.items() if k != "audio"} for c in clips]))
    return clips


def measure_tails(clips: list[dict], tails: tuple[int, ...]) -> list[dict]:
    """Smart Turn's P(complete) per clip after each silence tail (ms): {tail: p}."""
    from app.profiles import SMART_TURN
    from app.store import fetch
    from asr.smart_turn import SmartTurn

    smart = SmartTurn(fetch(SMART_TURN, progress=False))
    return [{t: smart.probability(with_tail(c["audio"], t)) for t in tails} for c in clips]


# --- fit ---------------------------------------------------------------------------------------------
def final(row: dict) -> bool:
    """Whisper's transcript at the pause ended in . ? ! (the text signal's companion feature)."""
    from asr.endpointing import ends_sentence

    return ends_sentence(row["transcript"])


def features(rows: list[dict], use: str) -> np.ndarray:
    from asr.endpointing import audio_feature, text_feature

    cols = [np.ones(len(rows))]
    if use in ("both", "audio_only"):
        cols.append(np.array([audio_feature(r["p_audio"]) for r in rows]))
    if use in ("both", "text_only"):
        cols.append(np.array([text_feature(r["p_text"]) for r in rows]))
        cols.append(np.array([float(final(r)) for r in rows]))
    return np.stack(cols, axis=1)


def logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 0.1) -> np.ndarray:
    w = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-x @ w))
        grad = x.T @ (p - y) + l2 * np.r_[0, w[1:]]
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.diag(np.r_[0, np.ones(x.shape[1] - 1)])
        w -= np.linalg.solve(hess, grad)
    return w


def to_model(w: np.ndarray, use: str) -> dict[str, float]:
    if use == "both":
        return {"bias": float(w[0]), "w_audio": float(w[1]), "w_text": float(w[2]), "w_final": float(w[3])}
    if use == "audio_only":
        return {"bias": float(w[0]), "w_audio": float(w[1]), "w_text": 0.0, "w_final": 0.0}
    return {"bias": float(w[0]), "w_audio": 0.0, "w_text": float(w[1]), "w_final": float(w[2])}


# A cut clip is a false endpoint when the wait is shorter than the pause the speaker makes before going
# on. Its share is taken as the expectation over the pauses `bench voice` draws (uniform 300-1200 ms), and
# over the key bucket (600-1000 ms) separately; each must stay within the eagerness's budget.
PAUSES_MS = (300.0, 1200.0)
KEY_PAUSES_MS = (600.0, 1000.0)
FALSE_ENDPOINT_BUDGET = {"low": 0.015, "medium": 0.03, "auto": 0.03, "high": 0.06}
HANGOVER_MS, CAP_MS = 500, 2000
# Candidate longest waits: at least the longest bench pause (1200 ms) + 100 ms, as the VAD may hear a pause
# up to ~100 ms longer than it is (its onset lags the speech); max_silence_ms caps them at run time.
LONG_MS_GRID = range(1300, CAP_MS + 1, 100)


def false_endpoint_share(waits: np.ndarray, pauses: tuple[float, float] = PAUSES_MS) -> np.ndarray:
    """Per cut clip, P(pause > wait) for a pause drawn uniformly from `pauses`."""
    lo, hi = pauses
    return np.clip((hi - np.asarray(waits, dtype=float)) / (hi - lo), 0.0, 1.0)


def graded_waits(p: np.ndarray, lo: float, hi: float, cap: float = CAP_MS) -> np.ndarray:
    """asr.endpointing.graded_wait, vectorised (same formula)."""
    from asr.endpointing import SHORT_MS

    def logit(x):
        x = np.clip(x, 1e-9, 1 - 1e-9)
        return np.log(x / (1 - x))

    span = logit(hi) - logit(lo)
    t = (logit(p) - logit(lo)) / span if span > 0 else np.zeros_like(p)
    wait = cap + np.clip(t, 0.0, 1.0) * (SHORT_MS - cap)
    return np.where(p >= hi, SHORT_MS, np.where(p <= lo, cap, wait))


def thresholds(p_complete: np.ndarray, p_cut: np.ndarray) -> dict[str, dict[str, float]]:
    """Per eagerness, the (unfinished, complete, long_ms) triple shaping the graded wait that gives complete
    clips the shortest expected wait while the cut clips' expected false-endpoint share (bench pauses, and
    the 600-1000 ms bucket) stays within the budget. Ties go to the smaller p90, then the wider graded
    region (an unsure sentence waits a few hundred ms rather than falling off a cliff to the cap)."""
    grid = np.unique(np.quantile(np.concatenate([p_complete, p_cut]), np.linspace(0, 1, 101)))
    grid = np.unique(np.concatenate([grid, [1e-6, 1.0 - 1e-9]]))
    out = {}
    for name, budget in FALSE_ENDPOINT_BUDGET.items():
        best = None
        for long_ms in LONG_MS_GRID:
            for i, lo in enumerate(grid):
                for hi in grid[i:]:
                    cut = graded_waits(p_cut, lo, hi, long_ms)
                    if np.mean(false_endpoint_share(cut)) > budget + 1e-9:
                        continue
                    if np.mean(false_endpoint_share(cut, KEY_PAUSES_MS)) > budget + 1e-9:
                        continue
                    wait = graded_waits(p_complete, lo, hi, long_ms)
                    key = (round(float(np.mean(wait)), 1), float(np.quantile(wait, 0.9)), -(hi - lo), long_ms)
                    if best is None or key < best[0]:
                        best = (key, float(lo), float(hi), float(long_ms))
        assert best is not None
        out[name] = {"complete": round(best[2], 6), "unfinished": round(best[1], 6), "long_ms": best[3]}
    return out


def evaluate(rows: list[dict], params, eagerness: str, hangover: float = HANGOVER_MS, cap: float = CAP_MS) -> dict:
    from asr.endpointing import SHORT_MS, decide

    waits, cut = [], []
    for r in rows:
        d = decide(r["p_audio"], r["p_text"], text_final=None if r["p_text"] is None else final(r),
                   eagerness=eagerness, hangover_ms=hangover, max_silence_ms=cap, params=params)  # fmt: skip
        (waits if r["complete"] else cut).append((d.wait_ms, r.get("pause_ms")))
    w = np.array([x for x, _ in waits])
    c = np.array([x for x, _ in cut])
    sampled = np.array([x < p for x, p in cut if p is not None])
    return {
        "complete_wait_p50_ms": float(np.median(w)), "complete_wait_p90_ms": float(np.quantile(w, 0.9)),
        "complete_wait_mean_ms": float(np.mean(w)), "complete_short_share": float(np.mean(w <= SHORT_MS)),
        "complete_cap_share": float(np.mean(w >= 1200)),
        "cut_false_endpoint_share": float(np.mean(false_endpoint_share(c))),  # bench pauses 300-1200 ms
        "cut_false_endpoint_share_600_1000": float(np.mean(false_endpoint_share(c, KEY_PAUSES_MS))),
        "cut_false_endpoint_share_sampled": float(np.mean(sampled)) if sampled.size else float("nan"),
        "n_complete": len(w), "n_cut": len(c),
    }  # fmt: skip


def describe(rows: list[dict]) -> None:
    """The signals' distributions on complete vs cut clips, per voice (what the fit has to separate)."""
    q = (0.1, 0.25, 0.5, 0.75, 0.9)
    print(f"{'voice':<6}{'clips':<9}{'p_audio q10/25/50/75/90':<34}{'p_text q10/25/50/75/90':<40}ends . ? !")
    for voice in [*VOICES, "all"]:
        for complete in (True, False):
            part = [r for r in rows if r["complete"] == complete and voice in (r["voice"], "all")]
            if not part:
                continue
            a = np.quantile([r["p_audio"] for r in part], q)
            t = np.quantile([r["p_text"] for r in part], q)
            print(f"{voice:<6}{'complete' if complete else 'cut':<9}{' '.join(f'{x:.2f}' for x in a):<34}"
                  f"{' '.join(f'{x:.4f}' for x in t):<40}{np.mean([final(r) for r in part]):.2f}")


def _auc(pos: list[float], neg: list[float]) -> float:
    a, b = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(np.mean((a > b) + 0.5 * (a == b)))


def split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Training and held-out clips, split by sentence (a held-out sentence is never heard in training)."""
    sentences = sorted({r["sentence"] for r in rows})
    held = set(random.Random(3).sample(sentences, len(sentences) // 3))
    return [r for r in rows if r["sentence"] not in held], [r for r in rows if r["sentence"] in held]


def fit_params(train: list[dict]) -> dict:
    """The three logistic models and the per-eagerness thresholds, from training clips only."""
    from asr.endpointing import Logistic

    y = np.array([1.0 if r["complete"] else 0.0 for r in train])
    models = {use: to_model(logistic_fit(features(train, use), y), use)
              for use in ("both", "audio_only", "text_only")}  # fmt: skip
    both = Logistic(**models["both"])
    p = np.array([both.probability(r["p_audio"], r["p_text"], final(r)) for r in train])
    complete = np.array([r["complete"] for r in train])
    return {"models": models, "thresholds": thresholds(p[complete], p[~complete])}


def as_params(data: dict):
    from asr.endpointing import load_params

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(data, f)
    return load_params(Path(f.name))


def leave_voice_out(rows: list[dict]) -> dict:
    """Per voice: fit on the other voices' training sentences, score on this voice's held-out ones (how
    the rule does on a voice it never heard)."""
    train, test = split(rows)
    return {f"leave-out/auto/{v}": evaluate([r for r in test if r["voice"] == v],
                                            as_params(fit_params([r for r in train if r["voice"] != v])), "auto")
            for v in VOICES}  # fmt: skip


def fit(rows: list[dict]) -> tuple[dict, dict]:
    from asr.endpointing import Logistic

    train, test = split(rows)
    data = fit_params(train)
    data["fitted_on"] = {
        "clips": len(train), "sentences": len({r["sentence"] for r in train}), "voices": list(VOICES),
        "script": "scripts/fit_turn_fusion.py", "date": time.strftime("%Y-%m-%d"),
        "objective": "min mean wait on complete clips s.t. expected false endpoints on cut clips "
                     f"(pauses uniform {PAUSES_MS[0]:.0f}-{PAUSES_MS[1]:.0f} ms, and "
                     f"{KEY_PAUSES_MS[0]:.0f}-{KEY_PAUSES_MS[1]:.0f} ms) <= budget {FALSE_ENDPOINT_BUDGET}",
    }  # fmt: skip
    params = as_params(data)
    both = Logistic(**data["models"]["both"])
    report = {}
    for name, part in (("train", train), ("held_out", test)):
        for eagerness in ("low", "medium", "auto", "high"):
            report[f"{name}/{eagerness}"] = evaluate(part, params, eagerness)
        # single signals, as the rule uses them when the other is late
        for use in ("audio_only", "text_only"):
            only = [{**r, "p_text": None} if use == "audio_only" else {**r, "p_audio": None} for r in part]
            report[f"{name}/auto/{use}"] = evaluate(only, params, "auto")
    for voice in VOICES:
        report[f"held_out/auto/{voice}"] = evaluate([r for r in test if r["voice"] == voice], params, "auto")
    for name, value in (("p_audio", lambda r: r["p_audio"]), ("p_text", lambda r: r["p_text"]),
                        ("P(finished)", lambda r: both.probability(r["p_audio"], r["p_text"], final(r)))):
        report[f"held_out/AUC {name}"] = {"auc": _auc([value(r) for r in test if r["complete"]],
                                                      [value(r) for r in test if not r["complete"]])}
    data["fitted_on"]["held_out"] = report["held_out/auto"]
    return data, report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=Path, default=Path("/tmp/turn_features.jsonl"),
                    help="measured signals (re-used when present; delete to measure again)")
    ap.add_argument("--write", action="store_true", help="save asr/data/turn_fusion.json")
    ap.add_argument("--leave-voice-out", action="store_true",
                    help="also fit without each voice and score on that voice's held-out clips")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.features.read_text().splitlines()] if args.features.exists() else []
    missing = tuple(v for v in VOICES if v not in {r["voice"] for r in rows})
    if missing:  # measure only the voices the features file lacks (seconds per clip)
        from app.assistant import Assistant
        from app.config import load_config

        assistant = Assistant.load(load_config(environ={}))
        rows += measure(assistant, make_clips(assistant.transcriber, voices=missing))
        args.features.write_text("".join(json.dumps(r) + "\n" for r in rows))
    describe(rows)
    data, report = fit(rows)
    if args.leave_voice_out:
        report.update(leave_voice_out(rows))
    for name, numbers in report.items():
        print(f"{name:<28} " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in numbers.items()))
    print(json.dumps(data["models"], indent=1), json.dumps(data["thresholds"], indent=1))
    if args.write:
        out = ROOT / "asr" / "data" / "turn_fusion.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
