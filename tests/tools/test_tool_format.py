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
    drop_repeated_optionals,
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


def test_spans_leave_free_text_alone_and_offer_an_optional_value_its_default():
    tool = ToolSpec("add_guest", "Add a guest.", {
        "type": "object",
        "properties": {"name": {"type": "string"}, "note": {"type": "string"},
                       "dietary": {"type": "string", "default": ""},
                       "plus_ones": {"type": "integer", "default": 0}, "table": {"type": "integer"}},
        "required": ["name", "note", "table"]}, free_text=("note",))  # fmt: skip
    props = copy_spans([tool], "Add Tom to the picnic")[0].parameters["properties"]
    assert props["note"] == {"type": "string"}  # the author's free text stays free
    assert props["dietary"]["enum"][0] == "" and "Tom" in props["dietary"]["enum"]
    assert props["plus_ones"] == {"default": 0, "enum": [0]}  # no number said: only the default
    assert props["table"] == {"type": "integer"}  # required, and no number said: left free
    props = copy_spans([tool], "Add Tom and 2 friends, table 7")[0].parameters["properties"]
    assert props["plus_ones"]["enum"] == [0, 2, 7] and props["table"]["enum"] == [2, 7]


def test_the_compact_default_decides_by_a_calibrated_threshold_and_writes_spans():
    """SmolLM2 never puts a call's first token first on its own, so under `auto` its argmax would never
    call: the compact style's default is a threshold, far below 0.5, and the channel choice with spans."""
    from app.tool_turn import ToolPlan
    from app.tools import ToolRegistry
    from llm.tool_format import CALL_POLICIES

    assert 0.0 < CALL_POLICIES["compact"].threshold < 0.01 and CALL_POLICIES["qwen"].threshold is None
    registry = ToolRegistry()

    @registry.register
    def add_guest(name: str) -> str:
        """Add a guest."""
        return name

    assert ToolPlan(registry).threshold("compact") is None  # no worked examples: the bare listing's argmax
    registry.add_examples({"add_guest": [("Add Tom.", {"name": "Tom"})]})
    plan = ToolPlan(registry)
    assert plan.threshold("compact") == CALL_POLICIES["compact"].threshold and plan.threshold("qwen") is None
    assert plan.write_call_kwargs("Add Tom", "compact") == {
        "name_choice": "channel", "spans_from": "Add Tom", "utterance": "Add Tom", "examples": registry.examples}
    assert plan.write_call_kwargs("Add Tom", "qwen") == {"name_choice": "greedy"}
    override = ToolPlan(registry, call_threshold=0.2, call_options={"copy_spans": False})
    assert override.threshold("compact") == 0.2
    assert "spans_from" not in override.write_call_kwargs("Add Tom", "compact")


def test_first_turn_call_probability_leaves_the_history_out(smol, tool_session):
    """P(call) "as a first turn" after a long history equals P(call) of a new session holding only that
    turn (what the threshold was calibrated on), and the session itself is left as it was."""
    from llm.session import Session

    said = "Add Maria to the picnic."
    fresh = Session(smol, system_prompt=tool_session.system_prompt, seed=0)
    fresh.extend(said)
    expected = call_probability(fresh)
    tool_session.add_turn("What is the capital of France?", "The capital of France is Paris.")
    tool_session.extend(said)
    in_history = call_probability(tool_session)  # opens the reply
    before = tool_session.tokens()
    assert call_probability(tool_session, first_turn=said) == pytest.approx(expected, rel=1e-3)
    assert call_probability(tool_session, first_turn=said) == pytest.approx(expected, rel=1e-3)  # kept prefix
    assert tool_session.tokens() == before and call_probability(tool_session) == pytest.approx(in_history)
    assert abs(in_history - expected) > 0.1 * expected  # the history does move it: leaving it out matters


def test_an_optional_span_that_repeats_another_argument_is_left_out(tool_session):
    """SmolLM2 fills an optional string nobody gave with a span already used ("dietary": "picnic" next to
    "event": "picnic"); the call is rewritten without it, and the history holds the call as it runs."""
    guest = ToolSpec("add_guest", "Add a guest to an event, with any dietary needs.", {
        "type": "object",
        "properties": {"name": {"type": "string"}, "event": {"type": "string"},
                       "dietary": {"type": "string", "default": ""}},
        "required": ["name", "event"]})  # fmt: skip
    assert drop_repeated_optionals(guest, {"name": "Tom", "event": "picnic", "dietary": "Picnic"}) == {
        "name": "Tom", "event": "picnic"}
    kept = {"name": "Tom", "event": "picnic", "dietary": "vegan"}
    assert drop_repeated_optionals(guest, kept) == kept
    said = "Add Tom to the picnic."
    tool_session.extend(said)
    call = write_call(tool_session, [guest], spans_from=said)
    assert call.arguments.get("dietary", "").lower() not in {call.arguments["name"].lower(),
                                                             call.arguments["event"].lower()}  # fmt: skip
    assert tool_session.history[-1]["content"] == call.text and parse_call(call.text) == (call.name, call.arguments)
    tool_session.extend(tool_response({"ok": True}))
    assert "".join(d.text for d in tool_session.generate(max_tokens=8)).strip()


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
