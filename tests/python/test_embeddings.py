"""`/v1/embeddings` through the official `openai` client against one daemon and a 2-stage mesh:
unit vectors of the model's width, the same text gives the same vector, a batch gives what
each input gives alone, token-id and base64 forms, `dimensions`; and one node and the mesh
agree."""

import base64
import math
import struct

import openai
import pytest

from conftest import MODEL_ID

TEXTS = ["The cat sat on the mat.", "Rust is a systems programming language.", "hi"]
# One node's vectors, to compare the mesh's with (the node runs first).
SEEN = {}


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.base + "/v1", api_key="none", max_retries=0, timeout=300)


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))


def test_vectors_are_unit_length_and_repeatable(client, served):
    r = client.embeddings.create(model=MODEL_ID, input=TEXTS[0])
    assert r.object == "list" and len(r.data) == 1 and r.data[0].index == 0
    v = r.data[0].embedding
    assert len(v) == 576  # SmolLM2-135M's width
    assert abs(norm(v) - 1) < 1e-4
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens
    again = client.embeddings.create(model=MODEL_ID, input=TEXTS[0]).data[0].embedding
    assert again == v
    kind = "mesh" if hasattr(served, "plan") else "node"
    SEEN[kind] = v
    if kind == "mesh" and "node" in SEEN:
        assert cos(SEEN["node"], v) > 0.999


def test_a_batch_gives_what_each_input_gives_alone(client):
    batch = client.embeddings.create(model=MODEL_ID, input=TEXTS)
    assert [d.index for d in batch.data] == [0, 1, 2]
    for t, d in zip(TEXTS, batch.data):
        alone = client.embeddings.create(model=MODEL_ID, input=t).data[0].embedding
        assert cos(alone, d.embedding) > 0.99999
    assert cos(batch.data[0].embedding, batch.data[1].embedding) < 0.9999


def test_token_ids_and_base64(client):
    ids = client.embeddings.create(model=MODEL_ID, input=[[1, 2, 3, 4], [5, 6]])
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 6
    flat = client.embeddings.create(model=MODEL_ID, input=[1, 2, 3, 4]).data[0].embedding
    assert cos(flat, ids.data[0].embedding) > 0.99999
    raw = client.embeddings.with_raw_response.create(
        model=MODEL_ID, input=[1, 2, 3, 4], encoding_format="base64").http_response.json()
    b = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(b) // 4}f", b)) == flat


def test_dimensions_only_as_the_width(client):
    assert len(client.embeddings.create(model=MODEL_ID, input="x", dimensions=576).data[0].embedding) == 576
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL_ID, input="x", dimensions=64)
    assert e.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL_ID, input=[[999999999]])
    assert e.value.body["param"] == "input"
