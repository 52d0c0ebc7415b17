"""The reply side of the Conversation: what a silence prepares, the end of a turn, replies, barge-in.

`Conversation` (app/conversation.py) owns the input side and all the state; these methods move an
utterance through PAUSED -> ENDED -> FINAL (app/turn_state.py) and start, confirm or drop replies.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.events import Interrupted, SpeechStopped, TranscriptFinal
from app.reply_stream import Reply, run_reply
from app.turn_state import SilenceWork, TurnState, Utterance

RATE = 16000


class TurnsAndReplies:
    """Methods of Conversation (see there for the attributes)."""

    _utterance: Utterance | None
    _finalizing: Utterance | None
    _reply: Reply | None
    _replies: dict[str, Reply]
    _user_prefix: str
    stats: dict[str, float]
    _stopping: set[asyncio.Task]  # dropped replies' pipelines still stopping (their waste not yet counted)
    endpoints: Any
    config: Any
    assistant: Any

    # -- a silence: decode, signals, preemptive reply -----------------------------------------------------
    def _start_silence_work(self, u: Utterance) -> None:
        """The silence may end the turn: get its transcript, measure the end-of-turn signals and (with
        `preemptive`) start the reply, all in the background."""
        work = u.silence = SilenceWork(self._clock, time.perf_counter())
        text = None
        if self._heard_all(u):
            # The latest partial decode already heard everything up to the silence: no new decode on the
            # critical path; its text is the turn's transcript unless the user goes on.
            text = f"{self._user_prefix} {u.asr.final_text()}".strip()
            u.marks["asr_final_ms"] = 0.0
            work.decode = asyncio.get_running_loop().create_future()
            work.decode.set_result(text)
            work.transcript_wall = work.started_wall
        else:
            work.decode = self._spawn(self._decode_now(u))
            work.decode.add_done_callback(lambda _, w=work: _transcript_known(w))
        self._turn_end.measure(u, work, text)
        if self.config.preemptive and self.config.auto_respond:
            reply = work.reply = self._new_reply(confirmed=False, preemptive=True)
            self.stats["preemptive_started"] += 1
            reply.task = self._spawn(self._run_preemptive(work, reply))

    async def _run_preemptive(self, work: SilenceWork, reply: Reply) -> None:
        text = await asyncio.shield(work.decode)
        if reply.cancelled or not text:
            return
        reply.user_text = text
        await self._run(reply)

    def _drop_silence_work(self, u: Utterance) -> None:
        """The user went on (or the turn was cleared): what this silence prepared is dropped unheard."""
        work, u.silence = u.silence, None
        if work is None:
            return
        reply = work.reply
        if reply is None or reply.cancelled:
            return
        reply.discarded = True
        reply.cancel()
        self.stats["preemptive_discarded"] += 1
        self._count_waste_when_stopped(reply, "preemptive")
        self._spawn(self._llm.forget(reply))

    def _count_waste_when_stopped(self, reply: Reply, kind: str) -> None:
        """Add a dropped reply's LLM work to `stats` (`<kind>_wasted_ms`, `<kind>_wasted_tokens`) once its
        pipeline has stopped: its numbers are only final then (it stops within one LLM step of the
        cancel). `settle_dropped()` waits for the ones still stopping."""
        task = reply.task
        if task is None or task.done():
            self._count_waste(reply, kind)
            return
        self._stopping.add(task)
        task.add_done_callback(lambda t, r=reply: (self._stopping.discard(t), self._count_waste(r, kind)))

    def _count_waste(self, reply: Reply, kind: str) -> None:
        if not reply.prepared:  # it never reached the LLM: the session's stats belong to another reply
            return
        for name, number in (("wasted_ms", "llm_generate_ms"), ("wasted_tokens", "tokens")):
            key = f"{kind}_{name}"
            self.stats[key] = self.stats.get(key, 0.0) + reply.numbers.get(number, 0.0)

    async def settle_dropped(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) until every dropped reply has stopped, so that `stats` holds all the work they
        wasted (benchmarks read it; nothing else needs to wait)."""
        if self._stopping:
            await asyncio.wait(list(self._stopping), timeout=timeout_s)

    # -- the end of a turn ----------------------------------------------------------------------------------
    def _close_utterance(self, u: Utterance) -> None:
        """The endpoint decision (synchronous, so the next frame already belongs to the next turn)."""
        u.to(TurnState.ENDED)
        self._utterance = None
        self._finalizing = u
        u.marks["endpoint"] = time.perf_counter()
        u.marks["endpoint_silence_ms"] = round((self._clock - u.last_voiced_end) * 1000.0 / RATE, 1)
        work = u.silence
        self.endpoints.append({
            "reason": u.endpoint_reason or "commit",
            "silence_ms": u.marks["endpoint_silence_ms"],
            "p_audio": work.p_audio if work is not None else None,
            "p_text": work.p_text if work is not None else None,
        })  # fmt: skip
        if self.config.turn_detection is not None:
            self._emit(SpeechStopped(round(u.last_voiced_end * 1000.0 / RATE, 1)))

    async def _finish_turn(self, u: Utterance) -> str:
        """Final transcript, then play the preemptive reply or start one."""
        work = u.silence
        if work is not None and work.decode is not None:
            text = await asyncio.shield(work.decode)  # only silence came after it: the same transcript
        else:
            text = await self._decode_now(u)
        if self._finalizing is u:
            self._finalizing = None
        self._emit(TranscriptFinal(text))
        resumed = u.state is TurnState.RESUMED
        u.to(TurnState.FINAL)
        if not text:
            self._drop_silence_work(u)
            return text
        if resumed or not self.config.auto_respond:
            # The user went on talking (or the app replies itself): keep the words for the next turn.
            self._drop_silence_work(u)
            self._user_prefix = text
            self._llm.feed(text)
            return text
        self._user_prefix = ""
        pre = work.reply if work is not None else None
        if pre is not None and not pre.cancelled:
            pre.user_text = text
            self.stats["preemptive_used"] += 1
            self._adopt(pre, u, work)
            pre.confirm()
            return text
        self._drop_silence_work(u)
        reply = self._new_reply(confirmed=True, preemptive=False, user_text=text)
        self._adopt(reply, u, work)
        reply.task = self._spawn(self._run(reply))
        return text

    def _adopt(self, reply: Reply, u: Utterance, work: SilenceWork | None) -> None:
        """`reply` answers utterance `u` (whose silence prepared `work`): it becomes the live reply and carries
        the turn's timings."""
        reply.marks["eos"] = u.eos_wall
        reply.marks["endpoint"] = u.marks["endpoint"]
        for name in ("asr_final_ms", "endpoint_silence_ms"):
            if name in u.marks:
                reply.numbers[name] = u.marks[name]
        if work is not None:
            reply.marks["silence"] = work.started_wall
            if work.transcript_wall is not None:
                reply.marks["transcript"] = work.transcript_wall
            for name in ("p_audio", "p_text"):
                if getattr(work, name) is not None:
                    reply.numbers[f"end_of_turn_{name}"] = round(getattr(work, name), 4)
        self._reply = reply

    # -- replies --------------------------------------------------------------------------------------------
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
        plan = self._reply_plan(reply)  # type: ignore[attr-defined]  # Conversation: speech or text, tools
        await run_reply(reply, self._session, self._lanes, self._llm.lock, self._synth, max_tokens, sampling, plan)
        self._llm.fed_text = None  # the session's user turn was closed by the reply

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
            # Work wasted on a false end of turn (the reply was ready or being made, nobody heard it).
            self.stats["unheard_discarded"] = self.stats.get("unheard_discarded", 0) + 1
            reply.cancel()
            self._count_waste_when_stopped(reply, "unheard")
            self._spawn(self._llm.forget(reply))
        else:
            self._spawn(self._llm.truncate(reply, heard))
        reply.cancel()
        self._emit(Interrupted(reply.id, heard))
        reply.send_metrics()


def _transcript_known(work: SilenceWork) -> None:
    work.transcript_wall = time.perf_counter()
