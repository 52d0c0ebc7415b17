"""When is the user done? A silence hangover, shortened when the words read as a finished sentence."""

from __future__ import annotations

from asr.streaming import normalize_word

# A sentence ending in one of these is not finished, whatever punctuation Whisper put after it.
DANGLING = {
    "a", "an", "the", "and", "or", "but", "so", "because", "to", "of", "in", "on", "at", "for", "with",
    "from", "about", "my", "your", "our", "their", "his", "her", "its", "is", "are", "was", "were", "what",
    "which", "who", "that", "if", "than", "then", "um", "uh", "like", "how", "when", "where", "why", "i",
    "between", "into", "onto", "through", "across", "against", "among", "toward", "towards", "upon", "via",
    "during", "within", "every", "each", "very",
}  # fmt: skip


def reads_complete(text: str) -> bool:
    """True when the transcript ends like a finished sentence ('What time is it?'), not mid-phrase."""
    text = text.strip()
    if not text or text[-1] not in ".?!":
        return False
    words = [normalize_word(w) for w in text.split()]
    return bool(words) and words[-1] not in DANGLING


def hangover_ms(text: str | None, mode: str | None, hangover: int, complete_hangover: int) -> float:
    """Silence that ends the turn. `text` is None when no decode has heard the speech up to the silence
    yet (then the words cannot vouch for the end). semantic_vad waits longer on an unfinished phrase."""
    if text is not None and reads_complete(text):
        return complete_hangover
    if mode == "semantic_vad":
        return min(2 * hangover, 2000)
    return hangover
