"""Tool calls and structured output through the official `openai` client: forced calls
parse as `tool_calls` (whole and streamed), tool results go back in, and JSON-schema
output at temperature 1 always validates (checked with the `jsonschema` validator)."""

import json

import jsonschema
import openai
import pytest

from conftest import MODEL_ID, Server

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client():
    srv = Server()
    yield openai.OpenAI(base_url=srv.base + "/v1", api_key="none", max_retries=0, timeout=300)
    srv.stop()


def test_required_tool_call_parses(client):
    r = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, tools=[WEATHER, ADD], tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=80,
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in ("get_weather", "add")
    args = json.loads(call.function.arguments)
    schema = (WEATHER if call.function.name == "get_weather" else ADD)["function"]["parameters"]
    jsonschema.validate(args, schema)


def test_named_tool_call_round_trip(client):
    r = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, tools=[WEATHER, ADD],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0, max_tokens=80,
    )
    msg = r.choices[0].message
    assert [t.function.name for t in msg.tool_calls] == ["get_weather"] * len(msg.tool_calls)
    call = msg.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    follow = client.chat.completions.create(
        model=MODEL_ID, tools=[WEATHER], temperature=0, max_tokens=30,
        messages=ASK + [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "sunny", "celsius": 21})},
        ],
    )
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_streamed_tool_call_deltas(client):
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
        temperature=0, max_tokens=80, stream=True,
    )
    calls, finish = {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        for d in ch.delta.tool_calls or []:
            slot = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            if d.id:
                slot["id"] = d.id
            if d.function and d.function.name:
                slot["name"] += d.function.name
            if d.function and d.function.arguments:
                slot["arguments"] += d.function.arguments
        finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"].startswith("call_") and calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])


def test_json_schema_at_temperature_one_always_validates(client):
    for seed in range(20):
        r = client.chat.completions.create(
            model=MODEL_ID, temperature=1, seed=seed, max_tokens=200,
            messages=[{"role": "user", "content": "Describe a user of a web site as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
        )
        c = r.choices[0]
        assert c.finish_reason == "stop", (seed, c.message.content)
        jsonschema.validate(json.loads(c.message.content), PERSON)


def test_unsupported_schema_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL_ID, messages=ASK, max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "string", "pattern": "^a+$"}}},
        )
    assert "pattern" in str(e.value)


def test_streamed_text_with_tools_arrives_as_it_comes(client):
    """With tools offered but answered in text, the text streams in pieces (not held to the
    end) and the pieces join into the whole answer."""
    args = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Name three colours."}],
                tools=[WEATHER], temperature=0, max_tokens=16)
    whole = client.chat.completions.create(**args).choices[0]
    assert not whole.message.tool_calls and whole.message.content
    deltas = [c.choices[0].delta.content for c in client.chat.completions.create(stream=True, **args)
              if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1
    assert "".join(deltas) == whole.message.content
