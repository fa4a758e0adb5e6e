"""`nexus-real serve` on CPU with tiny-llama, driven by the official openai client and by raw HTTP."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

torch = pytest.importorskip("torch")
openai = pytest.importorskip("openai")
aiohttp = pytest.importorskip("aiohttp")

from real.tokenizer import FoldedCl100k  # noqa: E402
from serve_helpers import make_server, serving  # noqa: E402

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = make_server("--policy", "nexus", out=tmp_path_factory.mktemp("served"))
    with serving(srv) as url:
        srv.url = url
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _stream_text(stream) -> tuple[str, int, str | None, dict | None]:
    """(text, chunks that carried a token, last finish reason, usage) of a streamed completion."""
    text, tokens, reason, usage = [], 0, None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            if piece is not None:
                text.append(piece)
                tokens += 1
            reason = choice.finish_reason or reason
    return "".join(text), tokens, reason, usage


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]


def test_completion_gives_max_tokens_and_exact_usage(client):
    prompt = "The quick brown fox jumps over the lazy dog"
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 12
    assert out.usage.prompt_tokens == len(FoldedCl100k(256).encode(prompt))
    assert out.usage.total_tokens == out.usage.prompt_tokens + 12


def test_streamed_completion_matches_the_whole_one(client):
    ids = [5, 17, 99, 3, 250, 42, 7]
    whole = client.completions.create(model=MODEL, prompt=ids, max_tokens=20, temperature=0)
    assert whole.usage.prompt_tokens == len(ids)
    stream = client.completions.create(model=MODEL, prompt=ids, max_tokens=20, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    text, tokens, reason, usage = _stream_text(stream)
    assert text == whole.choices[0].text       # greedy: the same tokens, streamed one chunk a token
    assert tokens == 20 and reason == "length"
    assert usage.completion_tokens == 20 and usage.prompt_tokens == len(ids)


def test_chat_streamed_and_not(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=9, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens == 9 and whole.choices[0].finish_reason == "length"
    expected_prompt = len(FoldedCl100k(256).encode("system: be brief\nuser: hello there\nassistant:"))
    assert whole.usage.prompt_tokens == expected_prompt
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=9, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text, tokens, reason, usage = _stream_text(iter(chunks))
    assert text == whole.choices[0].message.content
    assert tokens == 9 and reason == "length" and usage.completion_tokens == 9


def test_seed_makes_sampling_repeatable(client):
    def draw(seed):
        return client.completions.create(model=MODEL, prompt=[1, 2, 3, 4], max_tokens=24, temperature=1.0,
                                         top_p=0.95, seed=seed).choices[0].text
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_stop_string_ends_the_text_before_it(client):
    ids = [9, 8, 7, 6, 5]
    full = client.completions.create(model=MODEL, prompt=ids, max_tokens=40, temperature=0).choices[0].text
    # a two-character stop from the middle of the greedy text, at its first occurrence
    cut = next(i for i in range(3, len(full) - 2)
               if "\ufffd" not in full[i:i + 2] and full.find(full[i:i + 2]) == i)
    stop = full[cut:cut + 2]
    out = client.completions.create(model=MODEL, prompt=ids, max_tokens=40, temperature=0, stop=[stop, "\x00\x00"])
    assert out.choices[0].text == full[:cut]
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens < 40
    stream = client.completions.create(model=MODEL, prompt=ids, max_tokens=40, temperature=0, stop=stop,
                                       stream=True)
    text, _, reason, _ = _stream_text(stream)
    assert text == full[:cut] and reason == "stop"


@pytest.mark.parametrize("body, status, param", [
    ("{not json", 400, None),
    ({"model": MODEL}, 400, "prompt"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "hi", "temperature": 3}, 400, "temperature"),
    ({"model": MODEL, "prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"model": MODEL, "prompt": "hi", "n": 2}, 400, "n"),
    ({"model": MODEL, "prompt": "hi", "seed": 2**64}, 400, "seed"),
    ({"model": MODEL, "prompt": "hi", "logprobs": 2}, 400, "logprobs"),
    ({"model": MODEL, "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": MODEL, "prompt": "hi", "min_tokens": 5, "max_tokens": 2}, 400, "min_tokens"),
    ({"model": MODEL, "prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"model": MODEL, "prompt": ""}, 400, "prompt"),
    ({"model": MODEL, "prompt": [1, 2, 256]}, 400, None),
    ({"model": MODEL, "prompt": [[1, 2], [3]]}, 400, "prompt"),
    ({"model": MODEL, "prompt": [1] * 4090, "max_tokens": 10}, 400, None),
    ({"model": "gpt-9", "prompt": "hi"}, 404, "model"),
    ([1, 2, 3], 400, None),
])
def test_bad_completion_requests_get_an_openai_error(server, body, status, param):
    async def post():
        data = body if isinstance(body, str) else json.dumps(body)
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url + "/v1/completions", data=data) as resp:
                return resp.status, await resp.json()
    code, answer = asyncio.run(post())
    assert code == status
    error = answer["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert error["param"] == param


def test_openai_client_raises_on_bad_requests_and_the_server_goes_on(client, server):
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=-1)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a " * 5000}])
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x")
    assert server.engine.healthy
    assert client.completions.create(model=MODEL, prompt="ok", max_tokens=3).usage.completion_tokens == 3


def test_a_client_that_leaves_mid_stream_is_released(server):
    engine = server.engine

    async def leave_early():
        async with aiohttp.ClientSession() as session:
            body = {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 3000, "stream": True}
            async with session.post(server.url + "/v1/completions", json=body) as resp:
                assert resp.status == 200
                await resp.content.readline()   # the first token is out; now hang up
    before = len(engine.state.finished)
    asyncio.run(leave_early())
    deadline = time.monotonic() + 30
    while len(engine.state.finished) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    gone = engine.state.finished[-1]
    assert gone.generated < 3000 and gone.output_tokens == gone.generated
    assert engine.healthy and not engine.served
    assert len(engine.state.running) == 0


def test_health_metrics_and_summary(server, client):
    async def get(path):
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + path) as resp:
                return resp.status, await resp.text()
    code, text = asyncio.run(get("/health"))
    assert code == 200 and json.loads(text)["status"] == "ok"
    client.completions.create(model=MODEL, prompt="count me", max_tokens=5)
    code, text = asyncio.run(get("/metrics"))
    assert code == 200
    metrics = dict(line.split() for line in text.splitlines() if not line.startswith("#"))
    finished = int(metrics["nexus_requests_finished_total"])
    assert finished == len(server.engine.state.finished) >= 1
    assert int(metrics["nexus_generation_tokens_total"]) >= 5
    code, text = asyncio.run(get("/v1/summary"))
    summary = json.loads(text)
    assert code == 200 and summary["requests"] == finished and summary["policy"] == "nexus"
    assert summary["model"] == "tiny-llama" and summary["served"] is True
    assert 0 < summary["ttft_s"]["p50"] <= summary["ttft_s"]["p99"]
