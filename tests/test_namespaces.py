"""Our top-level packages `llm` and `kernels` share names with PyPI's `llm` and Hugging Face's `kernels`.

transformers probes for HF `kernels` at import time (and maps import names to distributions); this checks,
in a fresh interpreter outside the repo, that transformers still imports and runs a model with our packages
installed, does not take our `kernels` for HF's, and that `llm`/`kernels` resolve to our code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib.metadata as md, json, sys
import transformers
from transformers.utils import is_kernels_available
import transformers.integrations.hub_kernels  # imports HF kernels' API only if it thinks it is installed
import llm, kernels
from transformers import AutoModelForCausalLM, AutoTokenizer

def installed(dist):
    try:
        md.distribution(dist)
        return True
    except md.PackageNotFoundError:
        return False

tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
ids = tok("The capital of France is", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=4, do_sample=False)
print(json.dumps({
    "hf_kernels_available": is_kernels_available(),
    "kernels_file": kernels.__file__, "llm_file": llm.__file__,
    "llm_dist_installed": installed("llm"), "kernels_dist_installed": installed("kernels"),
    "owner_of_llm": md.packages_distributions().get("llm"),
    "new_tokens": out.shape[1] - ids.shape[1],
    "text": tok.decode(out[0, ids.shape[1]:]),
}))
"""


def test_transformers_runs_and_does_not_mistake_our_packages(llm_model_dir: Path, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-c", PROBE, str(llm_model_dir)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["hf_kernels_available"] is False
    assert Path(facts["kernels_file"]).resolve().is_relative_to(ROOT)
    assert Path(facts["llm_file"]).resolve().is_relative_to(ROOT)
    assert facts["llm_dist_installed"] is False and facts["kernels_dist_installed"] is False
    assert facts["owner_of_llm"] == ["specvoice"]
    assert facts["new_tokens"] == 4 and "Paris" in facts["text"]
