"""`dwarfstar serve` through the official `openai` Python client: what real clients see."""

import openai
import pytest

from conftest import MODEL_ID, Server, run_greedy

KEY = "sk-test-key"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def server():
    srv = Server("--api-key", KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0, timeout=300)


def test_list_models(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID


def test_chat_whole_equals_run(client):
    want = run_greedy("--chat", "--prompt", QUESTION, n=20)
    r = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=20,
    )
    assert r.object == "chat.completion"
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.message.content == want["text"]
    assert c.finish_reason == ("length" if len(want["tokens"]) == 20 else "stop")
    assert r.usage.prompt_tokens == len(want["prompt_tokens"])
    assert r.usage.completion_tokens == len(want["tokens"])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming(client):
    whole = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_completion_tokens=16,
    )
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_completion_tokens=16,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_equal_run(client):
    want = run_greedy("--prompt", "The quick brown fox", n=10)
    r = client.completions.create(model=MODEL_ID, prompt="The quick brown fox", max_tokens=10, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text == want["text"]
    streamed = client.completions.create(
        model=MODEL_ID, prompt="The quick brown fox", max_tokens=10, temperature=0, stream=True,
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want["text"]


def test_sampling_with_a_seed_repeats(client):
    args = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Tell me a story."}],
                temperature=1.0, top_p=0.9, seed=1234, max_tokens=12)
    a = client.chat.completions.create(**args).choices[0].message.content
    b = client.chat.completions.create(**args).choices[0].message.content
    assert a == b and a


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"


def test_bad_request_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], n=9)
    assert e.value.param == "n"


def test_401_without_or_with_a_wrong_key(server):
    status, body = server.request("GET", "/v1/models")
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    wrong = openai.OpenAI(base_url=server.base + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.models.list()
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"


def test_logprobs_whole_streamed_and_text(client):
    args = dict(model=MODEL_ID, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=8,
                logprobs=True, top_logprobs=3)
    r = client.chat.completions.create(**args)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.logprob == t.top_logprobs[0].logprob  # greedy picks the most likely
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token
    streamed = [t for c in client.chat.completions.create(stream=True, **args) if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    text = client.completions.create(model=MODEL_ID, prompt="The quick brown fox", max_tokens=5, temperature=0,
                                     logprobs=2)
    lp = text.choices[0].logprobs
    assert "".join(lp.tokens) == text.choices[0].text
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(lp.tokens)


def test_n_choices(client):
    r = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Tell me a word."}],
                                       temperature=1.0, seed=3, max_tokens=6, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens >= 3
    one = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Tell me a word."}],
                                         temperature=1.0, seed=5, max_tokens=6)
    assert one.choices[0].message.content == r.choices[2].message.content  # choice i samples with seed + i
    chunks = list(client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Tell me a word."}], temperature=1.0, seed=3,
        max_tokens=6, n=3, stream=True))
    for i in range(3):
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
        assert text == r.choices[i].message.content
