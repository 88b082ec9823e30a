"""OpenAI's Responses API (what Codex CLI speaks) through the official client's
`client.responses.create`, whole and streamed, text and function calls, against one daemon
and a 2-stage mesh; in the spirit of llama.cpp's test_compat_oai_responses."""

import json

import openai
import pytest

from conftest import MODEL_ID

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                          "required": ["city"]}}


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.base + "/v1", api_key="none", max_retries=0, timeout=300)


def test_text_response(client):
    r = client.responses.create(model=MODEL_ID, input="Say hello.", instructions="Be brief.",
                                max_output_tokens=12, temperature=0)
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in ("completed", "incomplete")
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output_text
    assert 0 < r.usage.output_tokens <= 12 and r.usage.input_tokens > 0


def test_streamed_text_matches_whole(client):
    args = dict(model=MODEL_ID, input=[{"role": "user", "content": "Name three colours."}],
                max_output_tokens=12, temperature=0)
    whole = client.responses.create(**args)
    events = list(client.responses.create(stream=True, **args))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_item.added" in kinds and "response.output_item.done" in kinds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text
    done = [e for e in events if e.type == "response.output_text.done"]
    assert done[0].text == text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == text


def test_function_call_round_trip(client):
    r = client.responses.create(model=MODEL_ID, input="What is the weather in Paris?", tools=[WEATHER],
                                tool_choice="required", temperature=0, max_output_tokens=60)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id
    assert "city" in json.loads(calls[0].arguments)
    follow = client.responses.create(model=MODEL_ID, tools=[WEATHER], temperature=0, max_output_tokens=20, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"},
    ])
    assert follow.status in ("completed", "incomplete")


def test_streamed_function_call(client):
    events = list(client.responses.create(
        model=MODEL_ID, input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
        temperature=0, max_output_tokens=60, stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done and done[0].arguments == deltas
    assert "city" in json.loads(deltas)
    items = [e.item for e in events if e.type == "response.output_item.done" and e.item.type == "function_call"]
    assert items[0].name == "get_weather"
    assert events[-1].type == "response.completed"


def test_bad_request_is_a_typed_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL_ID, input="hi", tools=[{"type": "custom", "name": "f"}])
    assert e.value.param == "tools[0].type"


def test_streamed_text_with_tools_arrives_as_it_comes(client):
    """Tools offered, answered in text: output_text deltas stream in pieces that join into the
    whole answer."""
    args = dict(model=MODEL_ID, input="Name three colours.", tools=[WEATHER], temperature=0,
                max_output_tokens=16)
    whole = client.responses.create(**args)
    assert [o.type for o in whole.output] == ["message"]
    events = list(client.responses.create(stream=True, **args))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1
    assert "".join(deltas) == whole.output_text
    assert events[-1].response.output_text == whole.output_text
