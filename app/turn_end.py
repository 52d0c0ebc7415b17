"""End of the user's turn: measure the signals when a silence starts, turn them into an endpoint.

Audio: Smart Turn v3.2 on the last <= 8 s, on its own lane (one model call at a time for the process).
Text: the conversation's own LLM session, `end_of_turn_probability` on the words heard, queued on the LLM
lane between other steps (it does not take the session-ops lock, so a reply being generated delays it by
at most one step, never by the whole reply). Neither is waited for: `endpoint()` is asked on every silent
frame and decides with what has arrived (asr/endpointing.py has the rule).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from app.events import TurnSignals
from app.turn_state import SilenceWork, Utterance
from asr.endpointing import decide, ends_sentence

log = logging.getLogger(__name__)

SHOW_EVERY_MS = 96  # three VAD frames between TurnSignals events while nothing else changes


class TurnEnd:
    def __init__(self, conv: Any) -> None:
        self._conv = conv
        self._smart_turn: Any = None
        self._shown: tuple[tuple[float | None, float | None], float] = ((None, None), -SHOW_EVERY_MS)
        # (silence id, the transcript of that silence ended in . ? !): rides with its text signal
        self._final: tuple[int, bool] = (0, False)
        if conv.config.endpointing == "semantic" and conv.config.turn_detection is not None:
            self._load()

    def _load(self) -> Any:
        """Smart Turn, loaded once per assistant (shared by its conversations)."""
        if self._smart_turn is None:
            cache = self._conv._lanes.cache
            model = cache.get("smart_turn")
            if model is None:
                from app.store import fetch
                from asr.smart_turn import SmartTurn

                assistant = self._conv.assistant
                path = fetch(assistant.profile.turn, offline=assistant.config.models.offline, progress=False)
                model = cache["smart_turn"] = SmartTurn(path)
            self._smart_turn = model
        return self._smart_turn

    def measure(self, u: Utterance, work: SilenceWork, text: str | None) -> None:
        """Start both measurements for this silence (`text`: the words if already known, else the
        silence's decode gives them)."""
        conv = self._conv
        if conv.config.endpointing != "semantic":
            return
        work.tasks.append(conv._spawn(self._audio(u, work)))
        work.tasks.append(conv._spawn(self._text(u, work, text)))

    async def _audio(self, u: Utterance, work: SilenceWork) -> None:
        # At once, beside the silence's decode (tried: after it, which spares Whisper a thread; but on a
        # loaded box the audio signal then comes after `hangover_ms` too, and with no signal in time the
        # plain timer ends the turn inside the speaker's pause).
        audio = np.concatenate(list(u.recent))
        p = await self._conv._lanes.turn.run(self._load().probability, audio)
        if u.silence is work:
            work.p_audio = p

    async def _text(self, u: Utterance, work: SilenceWork, text: str | None) -> None:
        conv = self._conv
        if text is None:
            if work.decode is None:
                return
            text = await asyncio.shield(work.decode)
        if u.silence is not work or not text:
            if u.silence is work:
                work.p_text = 0.0
            return
        p = await conv._lanes.llm.run(conv._session.end_of_turn_probability, text)
        if u.silence is work:
            self._final = (work.id, ends_sentence(text))
            work.p_text = p

    def _show(self, p_audio: float | None, p_text: float | None, silence_ms: float, wait_ms: float) -> None:
        """A TurnSignals event for consoles: when a signal arrives, and every ~100 ms of silence."""
        signals = (p_audio, p_text)
        if signals == self._shown[0] and silence_ms - self._shown[1] < SHOW_EVERY_MS:
            return
        self._shown = (signals, silence_ms)
        self._conv._emit(TurnSignals(
            None if p_audio is None else round(p_audio, 3), None if p_text is None else round(p_text, 3),
            round(silence_ms, 1), round(wait_ms, 1),
        ))  # fmt: skip

    def endpoint(self, u: Utterance, silence_ms: float) -> str | None:
        """Why the turn ends now, or None to keep listening. Asked on every silent frame."""
        cfg = self._conv.config
        if silence_ms >= cfg.max_silence_ms:
            return "max_silence"
        if cfg.endpointing == "fixed":
            return "fixed" if silence_ms >= cfg.hangover_ms else None
        work = u.silence
        p_audio = work.p_audio if work is not None else None
        p_text = work.p_text if work is not None else None
        final = self._final[1] if work is not None and self._final[0] == work.id else None
        decision = decide(p_audio, p_text, text_final=final, eagerness=cfg.eagerness,
                          hangover_ms=cfg.hangover_ms, max_silence_ms=cfg.max_silence_ms)  # fmt: skip
        self._show(p_audio, p_text, silence_ms, decision.wait_ms)
        if p_audio is not None and p_text is not None:
            return decision.reason if silence_ms >= decision.wait_ms else None
        # A signal is late (or never comes: a remote LLM has no text probability): hold on until the plain
        # timer, then decide with what is there (a lone signal that is unsure or says "unfinished" may keep
        # the turn open for its graded wait, up to max_silence_ms).
        if silence_ms < min(cfg.hangover_ms, cfg.max_silence_ms):
            return None
        if decision.reason in ("unfinished", "unsure") and silence_ms < decision.wait_ms:
            return None
        return "timer" if decision.p_finished is None else f"late_{decision.reason}"
