"""Anthropic's Messages API (what Claude Code speaks) through the official `anthropic` client:
text, streaming events, tool_use / tool_result, x-api-key auth and errors in Anthropic's
shape, against one daemon and a 2-stage mesh; in the spirit of llama.cpp's
test_compat_anthropic."""

import anthropic
import pytest

from conftest import MODEL_ID, Server

WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                            "required": ["city"]}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# Newer clients dropped the sampling arguments; the server still reads them.
T0 = {"extra_body": {"temperature": 0}}


@pytest.fixture(scope="module")
def client(served):
    return anthropic.Anthropic(base_url=served.base, api_key="none", max_retries=0, timeout=300)


def test_text_message(client):
    m = client.messages.create(model="claude-any", max_tokens=12, system="Be brief.", **T0,
                               messages=[{"role": "user", "content": "Say hello."}])
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert m.model == "claude-any"
    assert m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert 0 < m.usage.output_tokens <= 12 and m.usage.input_tokens > 0


def test_streamed_text_matches_whole(client):
    args = dict(model=MODEL_ID, max_tokens=12, **T0,
                messages=[{"role": "user", "content": [{"type": "text", "text": "Name three colours."}]}])
    whole = client.messages.create(**args)
    with client.messages.stream(**args) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_stop_sequence(client):
    m = client.messages.create(model=MODEL_ID, max_tokens=40, **T0, stop_sequences=["e"],
                               messages=[{"role": "user", "content": "Write a sentence about trees."}])
    if m.stop_reason == "stop_sequence":
        assert m.stop_sequence == "e" and "e" not in m.content[0].text


def test_tool_use_round_trip(client):
    m = client.messages.create(model=MODEL_ID, max_tokens=60, **T0, messages=ASK, tools=[WEATHER],
                               tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use"
    use = [b for b in m.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and use.id.startswith("toolu_") and "city" in use.input
    follow = client.messages.create(model=MODEL_ID, max_tokens=20, **T0, tools=[WEATHER], messages=ASK + [
        {"role": "assistant", "content": [use.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]},
    ])
    assert follow.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_streamed_tool_use(client):
    with client.messages.stream(model=MODEL_ID, max_tokens=60, **T0, messages=ASK, tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"}) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert "content_block_start" in kinds
    use = [b for b in final.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and "city" in use.input
    assert final.stop_reason == "tool_use"


def test_count_tokens(client):
    n = client.messages.count_tokens(model=MODEL_ID, messages=[{"role": "user", "content": "Hello there"}])
    assert n.input_tokens > 2


def test_errors_have_anthropics_shape(client):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL_ID, max_tokens=5, **T0,
                               messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}])
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_x_api_key_is_checked():
    srv = Server("--api-key", "sk-ant-test")
    try:
        ok = anthropic.Anthropic(base_url=srv.base, api_key="sk-ant-test", max_retries=0)
        assert ok.messages.create(model=MODEL_ID, max_tokens=2, messages=ASK).content
        bad = anthropic.Anthropic(base_url=srv.base, api_key="sk-wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as e:
            bad.messages.create(model=MODEL_ID, max_tokens=2, messages=ASK)
        assert e.value.body["error"]["type"] == "authentication_error"
    finally:
        srv.stop()


def test_streamed_text_with_tools_arrives_as_it_comes(client):
    """Tools offered, answered in text: the text block streams in pieces that join into the
    whole answer."""
    args = dict(model=MODEL_ID, max_tokens=16, **T0, tools=[WEATHER],
                messages=[{"role": "user", "content": "Name three colours."}])
    whole = client.messages.create(**args)
    assert [b.type for b in whole.content] == ["text"]
    with client.messages.stream(**args) as s:
        deltas = [e.delta.text for e in s if e.type == "content_block_delta" and e.delta.type == "text_delta"]
    assert len(deltas) > 1
    assert "".join(deltas) == whole.content[0].text
