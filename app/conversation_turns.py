"""The turn-ending half of the Conversation: preemptive replies, end of turn, replies, barge-in.

A mixin only to keep files short: `Conversation` (app/conversation.py) owns all the state these methods use.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from app.events import Interrupted, SpeechStopped, TranscriptFinal
from app.reply_stream import Reply, run_reply
from asr.streaming import StreamingTranscriber

RATE = 16000


@dataclass
class Utterance:
    """One stretch of user speech, from onset to endpoint."""

    asr: StreamingTranscriber
    start_sample: int  # conversation clock at asr sample 0
    last_voiced_end: int
    eos_wall: float
    in_silence: bool = False
    decode_task: asyncio.Task | None = None
    preemptive: Reply | None = None
    pre_decode: asyncio.Task | None = None
    resumed_after_end: bool = False  # speech started again before this turn's reply was confirmed
    marks: dict[str, float] = field(default_factory=dict)


class TurnsAndReplies:
    """Methods of Conversation (see there for the attributes)."""

    _utterance: Utterance | None
    _finalizing: Utterance | None
    _reply: Reply | None
    _replies: dict[str, Reply]
    _user_prefix: str
    config: Any
    assistant: Any

    def _start_preemptive(self, u: Utterance) -> None:
        reply = self._new_reply(confirmed=False, preemptive=True)
        u.preemptive = reply
        u.pre_decode = self._spawn(self._decode_now(u))
        reply.task = self._spawn(self._run_preemptive(u, reply))

    async def _run_preemptive(self, u: Utterance, reply: Reply) -> None:
        text = await asyncio.shield(u.pre_decode)
        if reply.cancelled or not text:
            return
        reply.user_text = text
        await self._run(reply)

    def _close_utterance(self, u: Utterance) -> None:
        """The endpoint decision (synchronous, so the next frame already belongs to the next turn)."""
        self._utterance = None
        self._finalizing = u
        u.marks["endpoint"] = time.perf_counter()
        if self.config.turn_detection is not None:
            self._emit(SpeechStopped(round(u.last_voiced_end * 1000.0 / RATE, 1)))

    async def _finish_turn(self, u: Utterance) -> str:
        """Final transcript, then play the preemptive reply or start one."""
        pre = u.preemptive
        if pre is not None and not pre.cancelled and u.pre_decode is not None:
            # Only silence came after the preemptive decode: reuse it (same transcript), no new decode.
            text = await asyncio.shield(u.pre_decode)
            pre.user_text = text
        else:
            self._drop_preemptive(u)
            text = await self._decode_now(u)
        if self._finalizing is u:
            self._finalizing = None
        self._emit(TranscriptFinal(text))
        if not text:
            self._drop_preemptive(u)
            return text
        if u.resumed_after_end or not self.config.auto_respond:
            # The user went on talking (or the app replies itself): keep the words for the next turn.
            self._drop_preemptive(u)
            self._user_prefix = text
            self._llm.feed(text)
            return text
        self._user_prefix = ""
        if u.preemptive is not None and not u.preemptive.cancelled and u.preemptive.user_text == text:
            reply = u.preemptive
            self._adopt(reply, u)
            reply.confirm()
        else:
            self._drop_preemptive(u)
            reply = self._new_reply(confirmed=True, preemptive=False, user_text=text)
            self._adopt(reply, u)
            reply.task = self._spawn(self._run(reply))
        return text

    def _adopt(self, reply: Reply, u: Utterance) -> None:
        """`reply` answers utterance `u`: it becomes the live reply and carries the turn's timings."""
        reply.marks["eos"] = u.eos_wall
        reply.marks["endpoint"] = u.marks["endpoint"]
        if "asr_final_ms" in u.marks:
            reply.numbers["asr_final_ms"] = u.marks["asr_final_ms"]
        self._reply = reply

    def _start_reply(self) -> None:
        text, self._user_prefix = self._user_prefix, ""
        reply = self._new_reply(confirmed=True, preemptive=False, user_text=text or None)
        self._reply = reply
        reply.task = self._spawn(self._run(reply))

    def _new_reply(self, confirmed: bool, preemptive: bool, user_text: str | None = None) -> Reply:
        reply = Reply(self._emit, confirmed, user_text, preemptive=preemptive, clock_ms=self._clock_ms)
        self._replies[reply.id] = reply
        while len(self._replies) > 16:
            self._replies.pop(next(iter(self._replies)))
        return reply

    async def _run(self, reply: Reply) -> None:
        self._llm.want_text = None  # the reply closes the user turn with its own text
        llm = self.assistant.config.llm
        from llm.sampling import SamplingParams

        sampling = SamplingParams(llm.temperature, llm.top_k, llm.top_p)
        max_tokens = self.config.max_reply_tokens or llm.max_reply_tokens
        await run_reply(reply, self._session, self._lanes, self._llm.lock, self._synth, max_tokens, sampling)
        self._llm.fed_text = None  # the session's user turn was closed by the reply

    def _drop_preemptive(self, u: Utterance) -> None:
        reply, u.preemptive, u.pre_decode = u.preemptive, None, None
        if reply is None or reply.cancelled:
            return
        reply.discarded = True
        reply.cancel()
        self._spawn(self._llm.forget(reply))

    def _live_reply(self) -> Reply | None:
        reply = self._reply
        if reply is None or reply.cancelled or not (not reply.finished or reply.playing()):
            return None
        return reply

    def _interrupt_live(self) -> None:
        reply = self._live_reply()
        if reply is None:
            return
        heard = reply.heard_text()
        reply.spoken_text, reply.interrupted = heard, True
        reply.numbers["played_ms"] = round(reply.played_ms(), 1)
        if not heard and reply.user_text and reply.audio_ms == 0:
            # Cut off before a sound came out: the user simply went on talking. Forget the reply and
            # keep their words for the turn they are still speaking.
            reply.discarded = True
            self._user_prefix = f"{reply.user_text} {self._user_prefix}".strip()
            self._spawn(self._llm.forget(reply))
        else:
            self._spawn(self._llm.truncate(reply, heard))
        reply.cancel()
        self._emit(Interrupted(reply.id, heard))
        reply.send_metrics()
