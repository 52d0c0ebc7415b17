"""Streaming transcription: re-decode the current utterance every few hundred ms, commit words with
LocalAgreement-2 (a word is committed once two consecutive hypotheses agree on it), trim the buffer on
long speech.

Whisper normally pads every call to a 30 s window, so a decode costs the same ~0.5 s on 2 cores whatever
the audio length. `ShortWindowDecoder` instead encodes only the audio plus ~2 s of trailing silence
(CTranslate2 accepts fewer than 3000 frames): ~5-10x cheaper on short utterances. Short windows sometimes
make Whisper loop ("and so my fellow Americans and so my ..."), so a decode that runs into its token cap
is redone with the full 30 s window.

The transcriber holds no lock and does no threading itself: `snapshot()` and `apply()` run on the
caller's thread (the conversation's event loop), `decode()` is the heavy part meant for a worker thread.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

RATE = 16000
FULL_WINDOW_FRAMES = 3000  # Whisper's 30 s window, in 10 ms mel frames


@dataclass(frozen=True)
class TimedWord:
    text: str
    end: float  # seconds from the start of the decoded audio


@dataclass(frozen=True)
class DecodeResult:
    text: str
    words: list[str]
    seconds: float  # wall time of the decode
    full_window: bool  # the 30 s fallback was used
    timed_words: list[TimedWord] | None = None  # only when timestamps were asked for


def normalize_word(word: str) -> str:
    """Compare words without case or punctuation: 'Americans,' agrees with 'americans'."""
    return re.sub(r"[^\w']", "", word.lower())


def common_prefix_length(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if normalize_word(x) != normalize_word(y):
            break
        n += 1
    return n


RESTART_WORDS = 4  # the utterance's first words heard again this many in a row: Whisper started over


def loop_start(words: list[str]) -> int | None:
    """Where Whisper starts looping: the second copy of a 2+ word phrase said twice in a row, or a new
    sentence that restarts the utterance from its beginning ('What is X? What is')."""
    norm = [normalize_word(w) for w in words]
    n = len(norm)
    for i in range(n):
        for length in range(2, (n - i) // 2 + 1):
            if norm[i : i + length] == norm[i + length : i + 2 * length]:
                return i + length
    for j in range(1, n):
        if words[j - 1][-1:] in ".?!" and norm[j:] == norm[: n - j]:
            return j
        if n - j >= RESTART_WORDS and norm[j : j + RESTART_WORDS] == norm[:RESTART_WORDS]:
            return j  # the utterance starts over mid-sentence ('what is the difference ... what is the difference')
    return None


class ShortWindowDecoder:
    """Greedy Whisper decode of 16 kHz audio, encoding only as much context as the audio needs."""

    def __init__(self, whisper_model, pad_s: float = 2.0, language: str = "en") -> None:
        from faster_whisper.tokenizer import Tokenizer

        self.model = whisper_model  # faster_whisper.WhisperModel
        self.pad_s = pad_s
        multilingual = bool(whisper_model.model.is_multilingual)
        self.tokenizer = Tokenizer(
            whisper_model.hf_tokenizer,
            multilingual,
            task="transcribe",
            language=language if multilingual else "en",
        )

    def decode(self, audio: np.ndarray, prompt: str | None = None, timestamps: bool = False) -> DecodeResult:
        started = time.perf_counter()
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        duration = audio.size / RATE
        # A cap well above any real speaking rate: running into it means Whisper is looping.
        cap = int(min(200, 10 + 5 * duration))
        text, ids, encoded, frames = self._run(audio, prompt, cap, full=duration + self.pad_s > 29.0)
        full = frames >= FULL_WINDOW_FRAMES
        if not full and (len(ids) >= cap - 1 or loop_start(text.split()) is not None):
            text, ids, encoded, frames = self._run(audio, prompt, cap, full=True)
            full = True
        words = text.split()
        loop = loop_start(words)
        if loop is not None:  # even the full window loops on trailing noise: keep the first copy
            words = words[:loop]
            text = " ".join(words)
            timestamps = False  # the alignment would cover the dropped copy too
        timed = self._align(ids, encoded, frames) if timestamps and ids else None
        return DecodeResult(text, words, time.perf_counter() - started, full, timed)

    @staticmethod
    def batchable(audio: np.ndarray, prompt: str | None, timestamps: bool, pad_s: float = 2.0) -> bool:
        """Whether `decode_many` can take this decode: a short window, no prompt, no word timestamps (the
        rest — long buffers of a long utterance — is rare and decoded alone)."""
        return not timestamps and not (prompt and prompt.strip()) and audio.size / RATE + pad_s <= 29.0

    def decode_many(self, audios: list[np.ndarray]) -> list[DecodeResult]:
        """Several short-window decodes (of different sessions) as ONE batched encode and generate: on a
        CPU the decoder's steps are memory-bound, so a batch of 4 costs far less than 4 decodes. The batch
        is padded with silence to its longest audio (the shorter ones hear more trailing silence, which can
        change a word's case or punctuation, seldom a word). A result that loops is redone alone with the
        full window, as in `decode`. Only for audio `batchable` accepts."""
        if len(audios) == 1:
            return [self.decode(audios[0])]
        started = time.perf_counter()
        audios = [np.ascontiguousarray(a, dtype=np.float32) for a in audios]
        caps = [int(min(200, 10 + 5 * a.size / RATE)) for a in audios]
        features = [self._features(a, full=False) for a in audios]
        frames = max(f.shape[1] for f in features)
        batch = np.zeros((len(features), features[0].shape[0], frames), dtype=np.float32)
        for row, f in zip(batch, features, strict=True):
            row[:, : f.shape[1]] = f
            # log-mel of silence, not zeros, beyond a shorter audio's own padding
            row[:, f.shape[1] :] = f[:, -1:]
        texts = [(text, ids) for text, ids, _, _ in self._generate(batch, [None] * len(audios), max(caps))]
        redo = [i for i, (text, ids) in enumerate(texts) if len(ids) >= caps[i] - 1 or loop_start(text.split())]
        for i in redo:  # looping on the short window: the fallback of `decode`, alone
            text, ids, _, _ = self._run(audios[i], None, caps[i], full=True)
            texts[i] = (text, ids)
        results = []
        for i, (text, _ids) in enumerate(texts):
            words = text.split()
            loop = loop_start(words)
            if loop is not None:  # even the full window loops on trailing noise: keep the first copy
                words = words[:loop]
                text = " ".join(words)
            results.append(DecodeResult(text, words, time.perf_counter() - started, i in redo, None))
        return results

    def _features(self, audio: np.ndarray, full: bool) -> np.ndarray:
        fe = self.model.feature_extractor
        if full:
            features = fe(audio[: 30 * RATE])  # pads to (at least) the 30 s window
            frames = FULL_WINDOW_FRAMES
        else:
            padded = np.concatenate([audio, np.zeros(int(self.pad_s * RATE), dtype=np.float32)])
            features = fe(padded, padding=0)
            frames = min(FULL_WINDOW_FRAMES, features.shape[1] - features.shape[1] % 2)
        return np.ascontiguousarray(features[:, :frames], dtype=np.float32)

    def _run(self, audio: np.ndarray, prompt: str | None, cap: int, full: bool):
        features = self._features(audio, full)
        return self._generate(features[None], [prompt], cap)[0]

    def _generate(self, features: np.ndarray, prompts: list[str | None], cap: int):
        """Encode a batch of log-mel windows (same length) and decode each greedily: (text, ids, encoded,
        frames) per row."""
        from faster_whisper.transcribe import get_ctranslate2_storage

        frames = features.shape[-1]
        encoded = self.model.model.encode(get_ctranslate2_storage(np.ascontiguousarray(features)), to_cpu=False)
        tk = self.tokenizer
        prefixes = []
        for prompt in prompts:
            prefix: list[int] = []
            if prompt and prompt.strip():
                prefix = [tk.sot_prev] + tk.encode(" " + prompt.strip())[-100:]
            prefixes.append(prefix + list(tk.sot_sequence) + [tk.no_timestamps])
        # CTranslate2's Whisper stops at about max_length / 2 generated tokens (measured): ask for 2x.
        results = self.model.model.generate(
            encoded, prefixes, beam_size=1, max_length=2 * cap, suppress_blank=True, suppress_tokens=[-1]
        )
        out = []
        for result in results:
            ids = [i for i in result.sequences_ids[0] if i < tk.eot]
            out.append((tk.decode(ids).strip(), ids, encoded, frames))
        return out

    def _align(self, ids: list[int], encoded, frames: int) -> list[TimedWord] | None:
        """Word end times from cross-attention; punctuation is merged into the word before it."""
        try:
            aligned = self.model.find_alignment(self.tokenizer, [ids], encoded, frames)[0]
        except Exception:  # alignment is an optimisation for trimming; never fail a decode on it
            return None
        words: list[TimedWord] = []
        for item in aligned:
            text = item["word"]
            if words and not text.startswith(" "):
                words[-1] = TimedWord(words[-1].text + text, float(item["end"]))
            else:
                words.append(TimedWord(text.strip(), float(item["end"])))
        return words


@dataclass
class DecodeJob:
    """What one decode sees: a copy of the buffer and the text before it (the prompt)."""

    audio: np.ndarray
    prompt: str
    buffer_start: int  # absolute sample index of audio[0] within the utterance
    end: int  # absolute sample index just after audio[-1]
    timestamps: bool
    frozen_words: int = 0  # how many trimmed-away words precede the buffer


@dataclass
class Partial:
    committed: str
    tentative: str
    new_words: list[str] = field(default_factory=list)  # committed by this update


class StreamingTranscriber:
    """One utterance at a time: append audio, decode snapshots, commit words with LocalAgreement-2."""

    def __init__(
        self, decoder: ShortWindowDecoder, max_buffer_s: float = 12.0, keep_s: float = 4.0, context: str = ""
    ) -> None:
        self.decoder = decoder
        self.max_buffer_s = max_buffer_s
        self.keep_s = keep_s
        # Fixed words Whisper is primed with (e.g. the tools' names and example sentences: a vocabulary
        # hint). Placed first in the prompt, so the decoder's 100-token prompt limit drops it first.
        self.context = context.strip()
        self.reset()

    def reset(self) -> None:
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # absolute sample index of the buffer's first sample
        self._frozen: list[str] = []  # committed words whose audio was trimmed away
        self._committed: list[str] = []  # committed words inside the buffer
        self._previous_tail: list[str] | None = None
        self.last_result: DecodeResult | None = None
        self.last_job: DecodeJob | None = None
        self.last_decoded_end = 0  # absolute sample index the last decode covered

    @property
    def samples(self) -> int:
        """Samples appended since reset (the utterance length)."""
        return self._buffer_start + self._buffer.size

    @property
    def committed_text(self) -> str:
        return " ".join(self._frozen + self._committed)

    def append(self, audio16k: np.ndarray) -> None:
        self._buffer = np.concatenate([self._buffer, np.asarray(audio16k, dtype=np.float32)])

    def snapshot(self) -> DecodeJob:
        return DecodeJob(
            audio=self._buffer.copy(),
            prompt=" ".join([self.context, *self._frozen[-40:]]).strip(),
            buffer_start=self._buffer_start,
            end=self.samples,
            timestamps=self._buffer.size > self.max_buffer_s * RATE,
            frozen_words=len(self._frozen),
        )

    def decode(self, job: DecodeJob) -> DecodeResult:
        """The heavy part: safe to run in a worker thread (touches only the job)."""
        return self.decoder.decode(job.audio, prompt=job.prompt or None, timestamps=job.timestamps)

    def apply(self, job: DecodeJob, result: DecodeResult) -> Partial:
        """LocalAgreement-2 against the previous hypothesis; committed words never change afterwards."""
        self.last_result, self.last_job = result, job
        self.last_decoded_end = job.end
        if job.buffer_start != self._buffer_start:  # the buffer was trimmed since: stale hypothesis
            return Partial(self.committed_text, "")
        tail = result.words[len(self._committed) :]
        new: list[str] = []
        if self._previous_tail is not None:
            agreed = common_prefix_length(self._previous_tail, tail)
            new, tail = tail[:agreed], tail[agreed:]
            self._committed += new
        self._previous_tail = tail
        if result.timed_words is not None:
            self._trim(result.timed_words, job)
        return Partial(self.committed_text, " ".join(tail), new)

    def _trim(self, timed: list[TimedWord], job: DecodeJob) -> None:
        """Drop buffer audio that lies under committed words, keeping the last `keep_s` seconds."""
        limit = job.audio.size / RATE - self.keep_s
        cut_word = -1
        for i in range(min(len(self._committed), len(timed))):
            if normalize_word(timed[i].text) != normalize_word(self._committed[i]):
                break
            if timed[i].end <= limit:
                cut_word = i
        if cut_word < 0:
            if self._buffer.size > 25 * RATE:  # no usable alignment: never exceed Whisper's window
                self._frozen += self._committed + (self._previous_tail or [])
                self._committed, self._previous_tail = [], None
                self._buffer_start += self._buffer.size
                self._buffer = self._buffer[:0]
            return
        cut = int(timed[cut_word].end * RATE)
        self._frozen += self._committed[: cut_word + 1]
        self._committed = self._committed[cut_word + 1 :]
        self._previous_tail = None  # the next hypothesis starts fresh on the trimmed buffer
        self._buffer = self._buffer[cut:]
        self._buffer_start += cut

    def final_text(self, job: DecodeJob | None = None, result: DecodeResult | None = None) -> str:
        """The turn's transcript: the words trimmed away before `job`'s buffer plus its decode."""
        if job is None or result is None:
            job, result = self.last_job, self.last_result
        if job is None or result is None:
            return self.committed_text
        return " ".join(self._frozen[: job.frozen_words] + result.words).strip()
