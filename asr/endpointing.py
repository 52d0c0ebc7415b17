"""When is the user done? Three signals fused into one wait: how much silence ends this turn.

* audio: Smart Turn v3.2's P(complete) on the last <= 8 s (asr/smart_turn.py) - hears intonation;
* text: the answering LLM's P(the next token ends the turn) after the user's words
  (`llm.session.Session.end_of_turn_probability`) - knows "My order number is" is not finished;
* Whisper's own punctuation at the pause: a transcript that ends in "." "?" "!" (Whisper hears the
  falling pitch and the closed syntax; a cut sentence mostly ends with no mark or a comma) - rides with
  the text signal (the LLM probe strips it first, so the two do not count the same thing twice);
* silence so far: the turn ends when the silence reaches the wait chosen from the others.

A logistic model (`z = bias + w_audio * logit(p_audio) + w_text * log10(p_text) + w_final * final`, fitted by
scripts/fit_turn_fusion.py on a generated training set, never on benchmark questions; the weights live in
asr/data/turn_fusion.json) turns the signals into P(finished). Per eagerness, two thresholds on it shape a
GRADED wait: at or above `complete` -> `SHORT_MS`; at or below `unfinished` -> `long_ms` (capped by `max_silence_ms`); in between
the wait falls linearly with logit(P) from the cap to the floor, so an unsure but finished sentence ends
after a few hundred ms instead of the full cap, while a clearly cut one still covers a long pause. A signal that is not ready yet falls back to the model fitted on the other one alone;
with neither, the plain timer. Every wait is capped by `max_silence_ms`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PARAMS_FILE = Path(__file__).parent / "data" / "turn_fusion.json"
EAGERNESS = ("low", "medium", "high", "auto")
ENDPOINTING = ("semantic", "fixed")
SHORT_MS = 150  # the wait once the signals agree the turn is finished


@dataclass(frozen=True)
class Logistic:
    bias: float
    w_audio: float
    w_text: float
    w_final: float = 0.0  # the transcript ended in sentence-final punctuation (counts with the text signal)

    def probability(self, audio: float | None, text: float | None, final: bool | None = None) -> float:
        z = self.bias
        if audio is not None:
            z += self.w_audio * audio_feature(audio)
        if text is not None:
            z += self.w_text * text_feature(text)
            if final:
                z += self.w_final
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


@dataclass(frozen=True)
class Thresholds:
    complete: float  # P(finished) at or above: end after SHORT_MS
    unfinished: float  # P(finished) at or below: wait `long_ms`; graded in between
    long_ms: float = 2000.0  # the longest wait (fitted to cover the pauses of cut sentences); <= max_silence_ms


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def graded_wait(p: float, limits: Thresholds, max_silence_ms: float) -> float:
    """Monotone in P: `long_ms` (capped by max_silence_ms) at or below `unfinished`, SHORT_MS at or above
    `complete`, linear in logit(P) between (a smooth trade-off instead of three steps, so an unsure sentence
    does not fall off a cliff to the cap)."""
    cap = max(min(limits.long_ms, max_silence_ms), SHORT_MS)
    if p >= limits.complete:
        return SHORT_MS
    if p <= limits.unfinished:
        return cap
    t = (_logit(p) - _logit(limits.unfinished)) / (_logit(limits.complete) - _logit(limits.unfinished))
    return cap + t * (SHORT_MS - cap)


@dataclass(frozen=True)
class FusionParams:
    both: Logistic
    audio_only: Logistic
    text_only: Logistic
    thresholds: dict[str, Thresholds]  # per eagerness

    def model(self, audio: float | None, text: float | None) -> Logistic | None:
        if audio is not None and text is not None:
            return self.both
        if audio is not None:
            return self.audio_only
        if text is not None:
            return self.text_only
        return None


# Smart Turn's logit is clipped to +-2 (P 0.12-0.88): on a voice unlike its training data it can be sure
# and wrong (a finished question at P 0.01), and the clip keeps one signal from overruling the others.
# Chosen by leaving one calibration voice out at a time (scripts/fit_turn_fusion.py --leave-voice-out).
AUDIO_LOGIT_LIMIT = 2.0


def audio_feature(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return max(-AUDIO_LOGIT_LIMIT, min(AUDIO_LOGIT_LIMIT, math.log(p / (1 - p))))


def text_feature(p: float) -> float:
    return math.log10(max(p, 1e-6))


FINAL_MARKS = (".", "?", "!", "…")


def ends_sentence(transcript: str) -> bool:
    """Whisper closed the words heard with sentence-final punctuation (the `final` feature)."""
    return transcript.rstrip().endswith(FINAL_MARKS)


@cache
def load_params(path: Path = PARAMS_FILE) -> FusionParams:
    data = json.loads(Path(path).read_text())
    models = {k: Logistic(**data["models"][k]) for k in ("both", "audio_only", "text_only")}
    thresholds = {k: Thresholds(**v) for k, v in data["thresholds"].items()}
    missing = set(EAGERNESS) - set(thresholds)
    if missing:
        raise ValueError(f"{path}: no thresholds for eagerness {sorted(missing)}")
    return FusionParams(models["both"], models["audio_only"], models["text_only"], thresholds)


@dataclass(frozen=True)
class Decision:
    wait_ms: float
    p_finished: float | None  # None: no signal was ready, the plain timer decided
    reason: str  # "complete" | "unfinished" | "unsure" | "timer" | "fixed"


def decide(
    audio: float | None,
    text: float | None,
    *,
    text_final: bool | None = None,
    endpointing: str = "semantic",
    eagerness: str = "auto",
    hangover_ms: float = 500,
    max_silence_ms: float = 2000,
    params: FusionParams | None = None,
) -> Decision:
    """The silence that ends the turn, given the signals ready now (None = not ready); `text_final`:
    the transcript the text signal was measured on ended in sentence-final punctuation."""
    if endpointing == "fixed":
        return Decision(min(hangover_ms, max_silence_ms), None, "fixed")
    params = params or load_params()
    model = params.model(audio, text)
    if model is None:
        return Decision(min(hangover_ms, max_silence_ms), None, "timer")
    p = model.probability(audio, text, text_final)
    limits = params.thresholds[eagerness]
    wait = graded_wait(p, limits, max_silence_ms)
    reason = "complete" if p >= limits.complete else "unfinished" if p <= limits.unfinished else "unsure"
    return Decision(min(wait, max_silence_ms), p, reason)
