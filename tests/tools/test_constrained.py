"""Constrained decoding from JSON schemas over the real SmolLM2 vocabulary.

The "model" in the property test is random logits (a fresh random state per token), the same as a
random-weight model for this purpose: the test is about the mask, which must make *any* model state
produce valid arguments. Each value is checked with `json.loads` and the `jsonschema` validator.
"""

from __future__ import annotations

import json
import random

import jsonschema
import numpy as np
import pytest
import torch

from llm.constrained import Alt, Lit, Seq, UnsupportedSchema, accepts, compile_schema
from llm.token_mask import ConstrainedDecoder, decode

WORDS = ["name", "date", "guest", "time", "kind", "x", "café", "a b", 'say "hi"', "n1", "émoji🎉", "id"]


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    kinds = ["string", "integer", "number", "boolean", "null", "enum", "object", "array", "union"]
    if depth >= 3:
        kinds = kinds[:6]
    kind = rng.choice(kinds) if depth else "object"
    if kind == "string":
        schema = {"type": "string"}
        if rng.random() < 0.9:
            schema["maxLength"] = rng.randint(0, 24)
            if rng.random() < 0.5:
                schema["minLength"] = rng.randint(0, schema["maxLength"])
        return schema
    if kind == "integer":
        schema = {"type": "integer"}
        if rng.random() < 0.6:
            low = rng.randint(-1000, 1000)
            schema["minimum"] = low
            if rng.random() < 0.7:
                schema["maximum"] = low + rng.choice([0, 1, 9, 10, 99, 5000])
        elif rng.random() < 0.3:
            schema["maximum"] = rng.randint(-50, 50)
        return schema
    if kind == "number":
        return {"type": "number", "description": "any number"}
    if kind in ("boolean", "null"):
        return {"type": kind}
    if kind == "enum":
        pool = [*WORDS, 0, 1, 12, 123, -4, 2.5, True, None]
        values = rng.sample(pool, rng.randint(1, 5))
        return {"enum": values} if rng.random() < 0.5 else {"type": "string", "enum": [*values, "yes"]}
    if kind == "union":
        return {"type": rng.sample(["string", "integer", "null", "boolean"], 2), "maxLength": 8}
    if kind == "array":
        schema = {"type": "array", "items": random_schema(rng, depth + 1), "maxItems": rng.randint(0, 4)}
        if rng.random() < 0.5:
            schema["minItems"] = rng.randint(0, schema["maxItems"])
        return schema
    names = rng.sample(WORDS, rng.randint(0, 4))
    props = {n: random_schema(rng, depth + 1) for n in names}
    schema = {"type": "object", "properties": props, "additionalProperties": False}
    schema["required"] = [n for n in names if rng.random() < 0.5]
    return schema


def test_thousand_random_schemas_always_valid(smol_vocab):
    rng = random.Random(1234)
    gen = np.random.default_rng(1234)
    # Random model states: a bank of random logit rows (flat to peaked), one drawn per position.
    bank = [torch.from_numpy(gen.standard_normal(smol_vocab.size, dtype=np.float32) * scale)
            for scale in (0.5, 3.0, 10.0) for _ in range(16)]  # fmt: skip
    checked = 0
    for _ in range(1000):
        schema = random_schema(rng)
        node = compile_schema(schema, smol_vocab.writable)
        text, tokens = decode(node, smol_vocab, lambda _t: bank[rng.randrange(len(bank))])
        value = json.loads(text)
        jsonschema.validate(value, schema)
        assert smol_vocab.text(tokens) == text
        checked += 1
    assert checked == 1000


def test_real_tokenizer_decodes_the_same_text(smol_vocab, smol_tokenizer):
    rng = random.Random(7)
    gen = torch.Generator().manual_seed(7)
    for _ in range(15):
        schema = random_schema(rng)
        logits = torch.randn(smol_vocab.size, generator=gen) * 3
        node = compile_schema(schema, smol_vocab.writable)
        text, tokens = decode(node, smol_vocab, lambda done, row=logits: row.roll(len(done)))
        assert smol_tokenizer.decode(tokens) == text


def test_required_and_enum_are_enforced_against_the_models_wishes(smol_vocab, smol_tokenizer):
    """Logits that push hard for '}' (end the object) and for a word outside the enum still give a valid value."""
    schema = {
        "type": "object",
        "properties": {"note": {"type": "string", "maxLength": 5}, "rsvp": {"enum": ["yes", "no", "maybe"]}},
        "required": ["rsvp"],
    }
    close = smol_tokenizer.convert_tokens_to_ids("}")
    wrong = smol_tokenizer(' "perhaps"', add_special_tokens=False)["input_ids"]

    def stubborn(_tokens):
        logits = torch.zeros(smol_vocab.size)
        logits[close] = 50.0
        logits[wrong] = 40.0
        return logits

    text, _ = decode(compile_schema(schema, smol_vocab.writable), smol_vocab, stubborn)
    value = json.loads(text)
    assert value["rsvp"] in ("yes", "no", "maybe")
    jsonschema.validate(value, schema)


def test_integer_bounds_prefixes(smol_vocab):
    node = compile_schema({"type": "integer", "minimum": 19, "maximum": 23})
    assert accepts(node, "19") and accepts(node, "23")
    assert not accepts(node, "24") and not accepts(node, "018") and not accepts(node, "1")
    decoder = ConstrainedDecoder(node, smol_vocab)
    allowed_first = {smol_vocab.strings[t] for t in np.flatnonzero(decoder.mask())}
    assert allowed_first <= {"1", "2", "19", "20", "21", "22", "23"} and {"1", "2"} <= allowed_first


def test_canonical_grammar_accepts_and_rejects():
    node = compile_schema({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
                           "required": ["b"]})  # fmt: skip
    assert accepts(node, '{"b": "x"}') and accepts(node, '{"a": -3, "b": ""}')
    assert not accepts(node, "{}")  # b is required
    assert not accepts(node, '{"b": "x", "a": 1}')  # schema order
    assert not accepts(node, '{"a": 01, "b": "x"}')
    assert not accepts(node, '{"b": "x"} ')  # nothing after the value


def test_tool_choice_grammar():
    args = compile_schema(
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    )
    call = Alt(('"get_weather", "arguments": ', '"hang_up", "arguments": '), (Seq((args, Lit(("}",)))),
               Seq((compile_schema({"type": "object"}), Lit(("}",))))))  # fmt: skip
    assert accepts(call, '"get_weather", "arguments": {"city": "Oslo"}}')
    assert accepts(call, '"hang_up", "arguments": {}}')
    assert not accepts(call, '"hang_up", "arguments": {"city": "Oslo"}}')


@pytest.mark.parametrize(
    "schema",
    [{"type": "string", "pattern": "a+"}, {"type": "number", "minimum": 0}, {"anyOf": []}, {"type": "array"},
     {"type": "object", "required": ["x"]}, {"type": "string", "minLength": 5, "maxLength": 2}],
)  # fmt: skip
def test_unenforceable_schemas_are_refused(schema):
    with pytest.raises(UnsupportedSchema):
        compile_schema(schema)
