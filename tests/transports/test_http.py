"""Admission rules of the one server port: routing, token, origin, subprotocol; the insecure-bind refusal."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from app.cli import main
from app.config import ServerConfig
from app.server import http
from app.server.realtime_schema import SessionSettings, parse_session_update
from app.server.session import ProtocolError


def request(path: str, **headers: str) -> Request:
    h = Headers({"Host": "127.0.0.1:8765", **{k.replace("_", "-"): v for k, v in headers.items()}})
    return Request(path, h)


WS = {"Upgrade": "websocket", "Connection": "Upgrade"}


def test_routes_pages_and_endpoints():
    config = ServerConfig()
    assert http.admit(config, request("/v1/realtime?model=x", **WS), {}).endpoint == http.REALTIME
    assert http.admit(config, request("/realtime", **WS), {}).endpoint == http.REALTIME
    assert http.admit(config, request("/twilio", **WS), {}).endpoint == http.TWILIO
    assert http.admit(config, request("/nope", **WS), {}).response.status_code == 404
    page = http.admit(config, request("/"), {}).response
    assert page.status_code == 200 and b"app.js" in page.body
    assert page.headers["Content-Type"].startswith("text/html")
    assert (
        http.admit(config, request("/worklet.js"), {})
        .response.headers["Content-Type"]
        .startswith("text/javascript")
    )
    assert http.admit(config, request("/secret.py"), {}).response.status_code == 404


def test_token_is_required_off_loopback_and_checked_in_every_form():
    open_config = ServerConfig(host="127.0.0.1")
    assert http.admit(open_config, request("/v1/realtime", **WS), {}).endpoint == http.REALTIME
    config = ServerConfig(host="0.0.0.0", token="s3cret")
    assert http.admit(config, request("/v1/realtime", **WS), {}).response.status_code == 401
    assert (
        http.admit(
            config, request("/v1/realtime", Authorization="Bearer wrong", **WS), {}
        ).response.status_code
        == 401
    )
    assert http.admit(config, request("/v1/realtime", Authorization="Bearer s3cret", **WS), {}).endpoint
    assert http.admit(config, request("/v1/realtime?token=s3cret", **WS), {}).endpoint
    subproto = {"Sec-WebSocket-Protocol": "realtime, openai-insecure-api-key.s3cret"}
    assert http.admit(config, request("/v1/realtime", **subproto, **WS), {}).endpoint
    # A token set on loopback is enforced too.
    assert http.admit(ServerConfig(token="t"), request("/twilio", **WS), {}).response.status_code == 401


def test_origin_check_allows_own_page_and_listed_origins_only():
    config = ServerConfig(allowed_origins=["https://app.example"])
    own = request("/v1/realtime", Origin="http://127.0.0.1:8765", **WS)
    assert http.admit(config, own, {}).endpoint == http.REALTIME
    listed = request("/v1/realtime", Origin="https://app.example", **WS)
    assert http.admit(config, listed, {}).endpoint == http.REALTIME
    evil = request("/v1/realtime", Origin="http://evil.example", **WS)
    assert http.admit(config, evil, {}).response.status_code == 403


def test_realtime_subprotocol_only_when_offered():
    assert http.select_subprotocol([]) is None
    assert http.select_subprotocol(["realtime", "openai-insecure-api-key.x"]) == "realtime"
    assert http.select_subprotocol(["chat"]) is None


def test_serve_refuses_a_public_bind_without_token(capsys):
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "without a token" in err and err.count("\n") == 1


def test_session_update_accepts_ga_and_beta_shapes():
    base = SessionSettings()
    ga = parse_session_update(
        base,
        {
            "type": "realtime",
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
                "output": {"format": {"type": "audio/pcma"}},
            },
        },
    )
    assert (ga.input_codec, ga.input_rate, ga.output_codec, ga.turn_detection) == (
        "g711_ulaw",
        8000,
        "g711_alaw",
        None,
    )
    assert ga.conversation_changes() == {"turn_detection": None, "auto_respond": False}
    beta = parse_session_update(
        base,
        {
            "input_audio_format": "g711_alaw",
            "output_audio_format": "pcm16",
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 700, "create_response": False},
        },
    )
    assert (beta.input_codec, beta.output_codec, beta.output_rate) == ("g711_alaw", "pcm16", 24000)
    changes = beta.conversation_changes()
    assert changes["max_silence_ms"] == 700 and changes["auto_respond"] is False
    semantic = parse_session_update(base, {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}})
    assert semantic.conversation_changes()["turn_detection"] == "semantic_vad"
    for bad in (
        {"input_audio_format": "mp3"},
        {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 5}}}},
        {"audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}},
        {"audio": "x"},
    ):
        with pytest.raises(ProtocolError):
            parse_session_update(base, bad)


def test_host_allow_list_refuses_rebinding_names():
    config = ServerConfig()
    for host in ("127.0.0.1:8765", "localhost", "LOCALHOST:1", "[::1]:8765", "::1", "127.9.9.9", "a.localhost"):
        assert http.host_allowed(config, host), host
    for host in (None, "", "evil.example", "evil.example:8765", "127.0.0.1.evil.example", "192.168.1.5"):
        assert not http.host_allowed(config, host), host
    listed = ServerConfig(allowed_hosts=["voice.example.com", "other.example:9000"])
    assert http.host_allowed(listed, "voice.example.com:8765")
    assert http.host_allowed(listed, "other.example:9000") and not http.host_allowed(listed, "other.example:1")
    public = ServerConfig(host="0.0.0.0", token="t")  # a wildcard bind with a token: IP literals too
    assert http.host_allowed(public, "192.168.1.5:8765") and not http.host_allowed(public, "evil.example")
    refused = http.admit(config, request("/healthz", Host="evil.example"), {})
    assert refused.response.status_code == 421


def test_bearer_check():
    assert http.bearer_ok(ServerConfig(), None)
    config = ServerConfig(token="s3cret")
    assert http.bearer_ok(config, "Bearer s3cret") and http.bearer_ok(config, "bearer s3cret")
    for bad in (None, "", "Bearer", "Bearer wrong", "Basic s3cret", "s3cret"):
        assert not http.bearer_ok(config, bad), bad


def test_redaction_masks_every_token_form():
    from app.server.redact import add_secret, redact

    add_secret("plain-secret-42")
    line = "GET /?token=abc123&x=1 Authorization: Bearer xyz789 proto openai-insecure-api-key.k55 plain-secret-42"
    clean = redact(line)
    for secret in ("abc123", "xyz789", "k55", "plain-secret-42"):
        assert secret not in clean
    assert "x=1" in clean


def test_token_file(tmp_path, capsys):
    from app.commands.serve import read_token_file

    path = tmp_path / "token"
    path.write_text("  tok-from-file \nignored\n")
    assert read_token_file(str(path)) == "tok-from-file"
    (tmp_path / "empty").write_text("\n")
    assert main(["serve", "--host", "0.0.0.0", "--port", "0", "--token-file", str(tmp_path / "empty")]) == 2
    assert "is empty" in capsys.readouterr().err
