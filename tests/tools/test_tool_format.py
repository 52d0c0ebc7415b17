"""Tool calls written by the real SmolLM2 through a Session: valid JSON for the schema, kept in the history."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from llm.tool_format import (
    ToolSpec,
    call_probability,
    channel_scores,
    copy_spans,
    parse_call,
    style_for,
    tool_response,
    tools_prompt,
    utterance_numbers,
    utterance_spans,
    write_call,
)

TOOLS = [
    ToolSpec("add_guest", "Add a guest to an event.", {
        "type": "object",
        "properties": {"event": {"type": "string", "maxLength": 40}, "name": {"type": "string", "maxLength": 40},
                       "dietary": {"enum": ["none", "vegetarian", "vegan", "gluten-free"]}},
        "required": ["event", "name", "dietary"]}),
    ToolSpec("plan_evening", "Plan an event's itinerary between two hours.", {
        "type": "object",
        "properties": {"event": {"type": "string", "maxLength": 40},
                       "start_hour": {"type": "integer", "minimum": 0, "maximum": 23},
                       "end_hour": {"type": "integer", "minimum": 0, "maximum": 23}},
        "required": ["event", "start_hour", "end_hour"]}),
]  # fmt: skip


@pytest.fixture
def tool_session(smol):
    """One torch thread: a 1-token forward per step is dominated by thread synchronisation otherwise."""
    from llm.session import Session

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    style = style_for(smol[1])
    yield Session(smol, system_prompt="You are a party planner.\n\n" + tools_prompt(TOOLS, style), seed=0)
    torch.set_num_threads(threads)


def test_smollm2_gets_the_compact_format(smol):
    assert style_for(smol[1]) == "compact"
    assert "add_guest(event: string, name: string" in tools_prompt(TOOLS, "compact")
    assert "<tools>" in tools_prompt(TOOLS, "qwen")


def test_written_call_is_valid_and_joins_the_history(tool_session):
    tool_session.extend("Add Maria to Saturday's party, she's vegetarian.")
    p_call = call_probability(tool_session)
    assert 0.0 <= p_call <= 1.0
    call = write_call(tool_session, TOOLS)
    spec = next(t for t in TOOLS if t.name == call.name)
    jsonschema.validate(call.arguments, spec.parameters)
    assert parse_call(call.text) == (call.name, call.arguments)
    assert tool_session.history[-1] == {"role": "assistant", "content": call.text}
    # the result goes back as a user turn and the model answers it as usual
    tool_session.extend(tool_response({"ok": True, "guest": call.arguments.get("name")}))
    answer = "".join(d.text for d in tool_session.generate(max_tokens=12))
    assert answer.strip()


def test_sampled_calls_stay_valid(tool_session):
    gen = torch.Generator().manual_seed(3)
    from llm.sampling import SamplingParams

    for prompt in ("Plan the evening from seven to eleven.", "Put Sam on the list for the picnic."):
        tool_session.extend(prompt)
        call = write_call(tool_session, TOOLS, SamplingParams(1.5), gen)
        jsonschema.validate(call.arguments, next(t for t in TOOLS if t.name == call.name).parameters)
        json.loads(call.text.split("\n")[1])
        tool_session.extend(tool_response("done"))
        list(tool_session.generate(max_tokens=4))


def test_spans_keep_arguments_to_the_users_words(tool_session):
    """copy_spans: free strings become spans of what was said, free integers numbers said in it (the tool
    name here by the noisy-channel score); the call is still schema-valid and joins the history."""
    said = "Please add Maria to the picnic, she is vegan. From 7 to 11."
    tool_session.extend(said)
    scores = channel_scores(tool_session, TOOLS, said)
    assert len(scores) == len(TOOLS) and all(s < 0 for s in scores)
    call = write_call(tool_session, TOOLS, spans_from=said, name_choice="channel", utterance=said)
    assert call.name == TOOLS[max(range(len(TOOLS)), key=scores.__getitem__)].name
    spec = next(t for t in TOOLS if t.name == call.name)
    jsonschema.validate(call.arguments, spec.parameters)
    for name, value in call.arguments.items():
        if spec.parameters["properties"][name].get("type") == "string":
            assert value in said, (name, value)
        elif spec.parameters["properties"][name].get("type") == "integer":
            assert value in utterance_numbers(said), (name, value)
    assert tool_session.history[-1]["content"] == call.text


def test_utterance_spans_and_numbers():
    assert utterance_spans("Add Tom, now.")[:4] == ["Add", "Tom", "now", "Add Tom"]
    assert utterance_numbers("order 4,172 from six to 10") == [4172, 10, 6]
    spans = copy_spans(TOOLS, "Add Tom to the picnic")[0].parameters["properties"]
    assert "Tom" in spans["name"]["enum"] and spans["dietary"] == TOOLS[0].parameters["properties"]["dietary"]


def test_spans_offer_the_owner_of_a_possessive():
    spans = utterance_spans("Write a toast for Emma's thirtieth birthday.")
    assert "Emma" in spans and "Emma's" in spans and "Emma's thirtieth birthday" in spans
    assert "Emma’s" not in spans and "Anna and Peter" in utterance_spans("for Anna and Peter’s wedding")


def test_channel_scores_from_kept_prefixes_equal_a_full_forward(tool_session):
    """The tools' channel contexts are prefilled once and reused: the score must be what one forward over
    context + utterance gives, on the first call, on a reuse, and after another utterance wrote its slots."""
    model, tokenizer = tool_session.model, tool_session.tokenizer
    examples = {"add_guest": [("Add Olivia to the brunch.", {})]}

    def full(tool: ToolSpec, said_text: str) -> float:
        shots = "".join(f'\nA request of this kind: "{t}"' for t, _ in examples.get(tool.name, []))
        context = tokenizer(tool.description + shots + "\nA request of this kind:", add_special_tokens=False)
        said = tokenizer(" " + said_text + '"', add_special_tokens=False)["input_ids"]
        ids = context["input_ids"] + said
        with torch.no_grad():
            logits = model(torch.tensor(ids[:-1]), model.new_cache(len(ids)), 0)
        logp = torch.log_softmax(logits[len(context["input_ids"]) - 1 :].float(), dim=-1)
        return float(logp[torch.arange(len(said)), torch.tensor(said)].sum())

    for said in ("Add Tom to the picnic, he is vegan.", "Plan it from seven to eleven.",
                 "Add Tom to the picnic, he is vegan."):  # fmt: skip
        got = channel_scores(tool_session, TOOLS, said, examples)
        assert got == pytest.approx([full(t, said) for t in TOOLS], abs=0.05)
