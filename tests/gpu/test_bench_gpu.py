"""`specvoice bench gpu --smoke` end to end on CPU, started the way the GPU machine will start it
(`python -m app.cli bench gpu ...` from the repo root) with the packages that machine lacks made
unimportable, so a stray import cannot crash the one GPU run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ABSENT_ON_GPU_MACHINE = ("faster_whisper", "ctranslate2", "piper", "soundfile", "sounddevice", "soxr",
                         "websockets", "openai", "jiwer", "gguf")  # fmt: skip
LAUNCH = (
    "import sys, runpy\n"
    f"for name in {ABSENT_ON_GPU_MACHINE!r}: sys.modules[name] = None\n"
    "sys.argv = ['app.cli', *sys.argv[1:]]\n"
    "runpy.run_module('app.cli', run_name='__main__')\n"
)


def _bench(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # CPU speed: references only
    env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "")
    proc = subprocess.run([sys.executable, "-c", LAUNCH, "bench", "gpu", "--smoke", "--json", str(out), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.is_file(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def test_bench_gpu_smoke_runs_end_to_end(tmp_path):
    acceptance = tmp_path / "llm.json"
    acceptance.write_text(json.dumps({"runs": [{"drafter": "ngram", "acceptance_rate": 0.62}]}))
    proc, results = _bench(tmp_path, "--acceptance-json", str(acceptance))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert results["errors"] == [] and results["skipped"] == []
    sections = results["sections"]
    spec_title = "speculative:tiny-target+tiny-draft"
    assert {"kernels", "steps:tiny-target", "steps:tiny-draft", spec_title} <= set(sections)
    timed = [r for r in sections["steps:tiny-target"] if "ms" in r]
    assert {r["format"] for r in timed} == {"bf16", "fp8"} and all(r["ms"] > 0 for r in timed)
    assert not [r for rows in sections.values() if isinstance(rows, list) for r in rows if "error" in r]
    spec = sections[spec_title]
    assert {r["draft_format"] for r in spec["rows"]} == {"bf16", "fp8"}
    assert any(
        r["alpha_source"].startswith("measured on CPU") and r["alpha"] == 0.62 for r in spec["composed"]
    )
    assert "COMPOSED" in proc.stdout and "MEASURED" in proc.stdout
    conversion = sections["fp8-conversion:tiny-target"]
    assert conversion["seconds"] > 0 and conversion["calibration_tokens"] == 96
    assert "one-time GPTQ rounding" in proc.stdout


def test_bench_gpu_refuses_without_cuda_unless_smoke(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, "-m", "app.cli", "bench", "gpu", "--json", str(tmp_path / "x.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "--smoke" in proc.stdout
