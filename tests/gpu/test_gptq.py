"""GPTQ fp8 rounding (llm/gptq.py): the algorithm on synthetic data, and the on-disk cache.

Random weights and inputs here (stated): these tests are about the algorithm and the cache's safety; the
accuracy on the real SmolLM2 weights is in test_fp8.py.
"""

from __future__ import annotations

import logging

import pytest
import torch

from kernels.fp8_ops import quantize_weight
from llm.gptq import cache_path, gptq_quantize_weight, quantize_cached
from llm.model import ModelArgs, Transformer

ARGS = ModelArgs(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                 intermediate_size=64, max_positions=64)  # fmt: skip
CALIBRATION = [list(range(i, i + 40)) for i in range(0, 50, 10)]


def _skip(name: str) -> bool:
    return name == "lm_head"


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    gen = torch.Generator().manual_seed(0)
    k, n = 96, 48
    # correlated input channels with a decaying spectrum, as hidden states have
    basis = torch.linalg.qr(torch.randn(k, k, generator=gen))[0]
    mix = torch.diag(torch.logspace(0, -2, k)) @ basis
    x = torch.randn(4000, k, generator=gen) @ mix
    x_test = torch.randn(500, k, generator=gen) @ mix  # same distribution, not calibrated on
    w = torch.randn(n, k, generator=gen) * 0.05
    codes, scale = gptq_quantize_weight(w, x.t() @ x)
    assert codes.dtype == torch.float8_e4m3fn and codes.shape == (n, k) and scale.shape == (n,)
    base = quantize_weight(w)[1]
    assert bool((scale >= base * (1 - 1e-6)).all() and (scale < 2 * base).all())
    ref = x_test @ w.t()

    def err(q, s):
        return float((x_test @ (q.float() * s[:, None]).t() - ref).norm() / ref.norm())

    print(f"\n[gptq synthetic] {err(codes, scale):.4f} vs nearest {err(*quantize_weight(w)):.4f}")
    assert err(codes, scale) < 0.6 * err(*quantize_weight(w))


def test_cache_round_trip_and_refusals(tmp_path, caplog):
    cache = tmp_path / "fp8" / "model.fp8.safetensors"
    first = quantize_cached(Transformer.random(ARGS, seed=0), CALIBRATION, _skip, cache)
    assert cache.is_file() and not list(cache.parent.glob(".*.tmp"))  # renamed into place
    with caplog.at_level(logging.INFO, logger="llm.gptq"):
        again = quantize_cached(Transformer.random(ARGS, seed=0), CALIBRATION, _skip, cache)
    assert "layers from" in caplog.text  # read, not recomputed
    assert first.keys() == again.keys() and len(first) == 2 * 7
    for name in first:
        assert torch.equal(first[name][0].view(torch.uint8), again[name][0].view(torch.uint8))
        assert torch.equal(first[name][1], again[name][1])

    # a truncated file (interrupted copy, full disk) is not trusted: recomputed and rewritten
    cache.write_bytes(cache.read_bytes()[:100])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llm.gptq"):
        recomputed = quantize_cached(Transformer.random(ARGS, seed=0), CALIBRATION, _skip, cache)
    assert "not usable" in caplog.text
    assert torch.equal(recomputed["layers.0.mlp.down_proj"][1], first["layers.0.mlp.down_proj"][1])
    assert quantize_cached(Transformer.random(ARGS, seed=0), CALIBRATION, _skip, cache).keys() == first.keys()

    # a file made for another model shape is refused too
    wider = ModelArgs(**{**ARGS.__dict__, "intermediate_size": 80})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llm.gptq"):
        other = quantize_cached(Transformer.random(wider, seed=0), CALIBRATION, _skip, cache)
    assert "not usable" in caplog.text and other["layers.0.mlp.down_proj"][0].shape == (32, 80)


def test_cache_path_follows_the_model_files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"x" * 10)
    same = cache_path(tmp_path / "c", model)
    assert cache_path(tmp_path / "c", model) == same and same.parent == tmp_path / "c"
    (model / "model.safetensors").write_bytes(b"y" * 11)  # replaced weights: another cache file
    assert cache_path(tmp_path / "c", model) != same


@pytest.mark.parametrize("bad", [b"", b"not safetensors at all"])
def test_unreadable_cache_is_recomputed_not_raised(tmp_path, bad):
    cache = tmp_path / "c.fp8.safetensors"
    cache.write_bytes(bad)
    result = quantize_cached(Transformer.random(ARGS, seed=1), CALIBRATION, _skip, cache)
    assert len(result) == 14 and cache.stat().st_size > 1000
