"""Model files → our `Transformer` + tokenizer.

A GGUF file (the default CPU model ships as one) is dequantised ONCE with transformers into a plain HF
folder (config.json + model.safetensors + tokenizer) in the cache; later loads read that folder with
safetensors directly, which takes a second or two instead of ~20 s of GGUF dequantisation.

The conversion writes into a temporary sibling folder and `os.replace`s it into place, so an interrupted
conversion never leaves a half-written folder that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from llm.model import ModelArgs, Transformer

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class ModelLoadError(RuntimeError):
    """A model path that does not exist or is not a model we can read."""


def _converted_root(gguf: Path) -> Path:
    """Where the dequantised folder of `gguf` goes: beside the file (the model store's cache for the
    defaults), or the temp dir when that folder is read-only."""
    if os.access(gguf.parent, os.W_OK):
        return gguf.parent / ".converted"
    return Path(tempfile.gettempdir()) / "specvoice-converted"


def _conversion_key(gguf: Path) -> str:
    """Name + size + mtime: cheap to compute, changes whenever the file is replaced."""
    stat = gguf.stat()
    digest = hashlib.sha1(f"{gguf.name}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return f"{gguf.stem}-{stat.st_size}-{digest}"


def is_hf_folder(path: Path) -> bool:
    return (
        path.is_dir()
        and (path / "config.json").is_file()
        and any((path / f).exists() for f in HF_WEIGHT_FILES)
    )


def ensure_hf_folder(path: Path | str) -> Path:
    """Return an HF folder for `path`: itself if it is one, else the (cached) dequantised GGUF."""
    path = Path(path).expanduser()
    if is_hf_folder(path):
        return path
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ModelLoadError(
                f"{path}: not an HF model folder (no config.json + weights) and not one GGUF file"
            )
        path = ggufs[0]
    if not path.is_file() or path.suffix != ".gguf":
        raise ModelLoadError(f"{path}: expected an HF model folder or a .gguf file")
    target = _converted_root(path) / _conversion_key(path)
    if is_hf_folder(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert_gguf(path, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_hf_folder(target):  # another process won the race with a complete folder: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise with transformers' GGUF reader into a fresh HF model and save that.

    `from_pretrained(gguf_file=...)` would need `accelerate` and its model refuses `save_pretrained`, so we
    build the model from the GGUF's config and load the dequantised tensors ourselves.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    state = {key: torch.as_tensor(value).to(torch.float32) for key, value in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelLoadError(
            f"{gguf}: GGUF tensors do not match the model (missing {missing}, unexpected {unexpected})"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "specvoice-source.json").write_text(json.dumps({"gguf": str(gguf)}))


def load_tokenizer(folder: Path | str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ensure_hf_folder(folder)))


def load_model(
    folder: Path | str, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[Transformer, object]:
    """Load our compact decoder and its tokenizer from an HF folder (or a GGUF, converted once)."""
    folder = ensure_hf_folder(Path(folder))
    model = Transformer.from_folder(folder, dtype=dtype, device=device)
    return model, load_tokenizer(folder)


__all__ = ["ModelArgs", "ModelLoadError", "ensure_hf_folder", "is_hf_folder", "load_model", "load_tokenizer"]
