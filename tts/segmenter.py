"""Verified LLM text deltas -> speakable pieces for incremental synthesis.

The first piece is deliberately short (a clause, or a few words when no punctuation comes), because the
time to the first sound is what the user hears as latency; later pieces are whole sentences, which Piper
speaks with better prosody. A boundary only counts once the character after the punctuation is seen
(so "3.5" or "Dr. Who" are not split mid-token), and `flush()` hands over whatever is left at the end.
"""

from __future__ import annotations

import re

_SENTENCE_END = ".!?"
_CLAUSE_END = ",;:"
_DASHES = ("—", " - ")
# Markup that an instruction-tuned model sometimes emits and a voice must not read out.
_MARKUP = re.compile(r"[*_#`~]+|\[|\]|<[^>]*>")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "no", "prof", "jr", "sr"}


def clean_for_speech(text: str) -> str:
    text = _MARKUP.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


class Segmenter:
    """Feed text deltas with `push()`; collect complete pieces; `flush()` at the end of the reply."""

    def __init__(
        self, first_min_words: int = 1, first_max_words: int = 3, min_words: int = 3, max_chars: int = 200
    ) -> None:
        self.first_min_words = first_min_words
        self.first_max_words = first_max_words
        self.min_words = min_words
        self.max_chars = max_chars
        self._text = ""
        self.pieces_out = 0

    def push(self, delta: str) -> list[str]:
        self._text += delta
        pieces: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            piece, self._text = self._text[:cut], self._text[cut:]
            piece = clean_for_speech(piece)
            if piece:
                pieces.append(piece)
                self.pieces_out += 1
        return pieces

    def flush(self) -> list[str]:
        piece = clean_for_speech(self._text)
        self._text = ""
        if piece and any(ch.isalnum() for ch in piece):
            self.pieces_out += 1
            return [piece]
        return []

    def _find_cut(self) -> int | None:
        """Index just after a boundary in the pending text, or None to wait for more."""
        text = self._text
        first = self.pieces_out == 0
        min_words = self.first_min_words if first else self.min_words
        words = text.split()
        # The first piece is never longer than a few words when more text is already there (speculative
        # decoding often hands over a whole clause at once: "Set a timer for 20 minutes," would be spoken
        # as one first piece, twice the synthesis before the first sound).
        word_cut = (
            self._index_after_words(text, self.first_max_words)
            if first and len(words) > self.first_max_words
            else None
        )
        for i, ch in enumerate(text[:-1]):
            if word_cut is not None and i >= word_cut:
                return word_cut
            if not text[i + 1].isspace():
                continue
            words_before = len(text[: i + 1].split())
            if ch in _SENTENCE_END and words_before >= 1 and not self._is_abbreviation(text, i):
                if words_before >= min_words or ch in "!?" or first:
                    return i + 1
            if ch in _CLAUSE_END and (first and words_before >= min_words or words_before >= 8):
                return i + 1
            if first and words_before >= min_words and any(text.startswith(d, i) for d in _DASHES):
                return i + 1
        if word_cut is not None:
            # No punctuation soon: cut after a few words rather than wait for the whole sentence. A word
            # after them proves they are complete (LLM tokens carry their *leading* space, " weather", so
            # the text seldom ends in one: waiting for that kept the whole first sentence as one piece).
            return word_cut
        if len(text) > self.max_chars and text[-1].isspace():
            return self._index_after_words(text, len(words) - 1)
        return None

    @staticmethod
    def _is_abbreviation(text: str, i: int) -> bool:
        if text[i] != ".":
            return False
        word = text[:i].split()[-1].lower() if text[:i].split() else ""
        return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())

    @staticmethod
    def _index_after_words(text: str, n: int) -> int:
        count, i = 0, 0
        for match in re.finditer(r"\S+", text):
            count += 1
            i = match.end()
            if count == n:
                break
        return i
