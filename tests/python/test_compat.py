"""Chat compatibility in the spirit of llama.cpp's server tests (test_chat_completion,
test_tool_call): the official `openai` client against one daemon and against a 2-stage mesh
(the `served` fixture), whole and streamed, with tool calls."""

import json

import openai
import pytest

from conftest import MODEL_ID

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.base + "/v1", api_key="none", max_retries=0, timeout=300)


@pytest.mark.parametrize("system,user,max_tokens", [
    ("Book", "What is the best book", 8),
    ("You are a coding assistant.", "Write the fibonacci function in c++.", 12),
])
def test_chat_completion_whole_and_streamed_agree(client, system, user, max_tokens):
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    r = client.chat.completions.create(model=MODEL_ID, messages=msgs, max_tokens=max_tokens, temperature=0)
    c = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert c.message.role == "assistant" and c.message.content
    assert c.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= max_tokens
    chunks = list(client.chat.completions.create(
        model=MODEL_ID, messages=msgs, max_tokens=max_tokens, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == c.message.content
    assert chunks[-1].choices[0].finish_reason == c.finish_reason


def test_logprobs_and_choices(client):
    r = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert content and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
    assert "".join(t.token for t in content) == r.choices[0].message.content


def test_forced_tool_call_whole_and_streamed(client):
    r = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
        temperature=0, max_tokens=60)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    args, finish = "", None
    for chunk in client.chat.completions.create(
            model=MODEL_ID, messages=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
            temperature=0, max_tokens=60, stream=True):
        for d in chunk.choices[0].delta.tool_calls or []:
            args += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert json.loads(args) == json.loads(call.function.arguments)


def test_tool_result_goes_back_in(client):
    r = client.chat.completions.create(
        model=MODEL_ID, temperature=0, max_tokens=20, tools=[WEATHER], messages=ASK + [
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}])
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_invalid_request_is_a_typed_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=ASK, top_logprobs=30, logprobs=True)
    assert e.value.param == "top_logprobs"
