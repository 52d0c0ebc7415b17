"""The typed config: file, then environment, then flags; typos and bad values are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError, load_config
from app.profiles import PROFILES, resolve_profile


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text('[llm]\ntemperature = 0.3\nmax_reply_tokens = 40\n[models]\nprofile = "gpu-local"\n')
    config = load_config(file, {"llm.max_reply_tokens": "12"}, environ={"SPECVOICE_LLM_TEMPERATURE": "0.9"})
    assert config.llm.temperature == 0.9  # env beats file
    assert config.llm.max_reply_tokens == 12  # flags beat env
    assert config.models.profile == "gpu-local"


def test_bools_optionals_and_lists_are_coerced() -> None:
    config = load_config(None, {"conversation.barge_in": "off", "llm.seed": "none",
                                "server.allowed_origins": "http://a, http://b"}, environ={})
    assert config.conversation.barge_in is False and config.llm.seed is None
    assert config.server.allowed_origins == ["http://a", "http://b"]


@pytest.mark.parametrize("key,value,message", [
    ("llm.temprature", "1", "unknown setting 'llm.temprature'"),
    ("nope.x", "1", "unknown setting"),
    ("llm.max_reply_tokens", "many", "expected int"),
])
def test_bad_settings_are_clear_errors(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {key: value}, environ={})


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})
    (tmp_path / "bad.toml").write_text("[llm\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(tmp_path / "bad.toml", environ={})


def test_profiles_pair_target_and_draft_of_one_family() -> None:
    assert PROFILES["cpu"].llm.startswith("pypi:") and PROFILES["cpu"].asr.startswith("pypi:")
    for name in ("gpu-h100", "gpu-local"):
        p = PROFILES[name]
        assert p.llm.startswith("hf:Qwen/Qwen2.5-") and p.draft.startswith("hf:Qwen/Qwen2.5-")
    config = load_config(None, {"models.llm": "/models/x"}, environ={})
    assert resolve_profile(config).llm == "/models/x"
    with pytest.raises(ConfigError, match="unknown profile"):
        resolve_profile(load_config(None, {"models.profile": "tpu"}, environ={}))
