"""apps/knowledge/pipeline/embed.py: the bundled USE model and an OpenAI-compatible client,
the latter against a real HTTP server on 127.0.0.1 speaking the embeddings protocol."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from apps.knowledge.pipeline.embed import (
    Embedder,
    LocalEmbedder,
    OpenAIEmbedder,
    embed_texts,
    embeddings_url,
    get_embedder,
)
from apps.knowledge.pipeline.types import EmbeddingError

BASE_DIR = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------------------
# A fake OpenAI-compatible embeddings server
# --------------------------------------------------------------------------------------
def fake_vector(text: str, dimension: int) -> list[float]:
    """Deterministic, not normalised: the client must normalise it."""
    digest = hashlib.sha256(text.encode()).digest()
    return [1.0 + digest[i % len(digest)] / 64 for i in range(dimension)]


def normalised(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector]


@dataclass
class EmbeddingServer:
    """``plan``: what to do for the next requests, in order, then "ok" for the rest:
    "ok", ("status", code, body_dict_or_text[, headers]), ("sleep", seconds)."""

    url: str = ""
    dimension: int = 8
    plan: list[Any] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_action(self) -> Any:
        with self.lock:
            return self.plan.pop(0) if self.plan else "ok"


def make_handler(server_state: EmbeddingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # keep pytest output clean
            pass

        def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            raw = (json.dumps(body) if not isinstance(body, str) else body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with server_state.lock:
                server_state.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            action = server_state.next_action()
            try:
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = "ok"
                if isinstance(action, tuple) and action[0] == "status":
                    self.send_json(action[1], action[2], action[3] if len(action) > 3 else None)
                    return
                if self.path != "/v1/embeddings":
                    self.send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                data = [
                    {"object": "embedding", "index": i, "embedding": fake_vector(text, server_state.dimension)}
                    for i, text in enumerate(body["input"])
                ]
                random.Random(len(server_state.requests)).shuffle(data)  # order by "index", not position
                self.send_json(200, {"object": "list", "data": data, "model": body["model"]})
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

    return Handler


@pytest.fixture
def embedding_server() -> Iterator[EmbeddingServer]:
    state = EmbeddingServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def client(server: EmbeddingServer, **kwargs: Any) -> OpenAIEmbedder:
    options = {"model": "text-embedding-3-small", "timeout": 5.0, "max_retries": 3, "backoff_base": 0.01}
    options.update(kwargs)
    return OpenAIEmbedder(base_url=options.pop("base_url", server.url), **options)


# --------------------------------------------------------------------------------------
# openai provider
# --------------------------------------------------------------------------------------
def test_embeddings_url():
    assert embeddings_url("https://api.openai.com") == "https://api.openai.com/v1/embeddings"
    assert embeddings_url("https://api.openai.com/") == "https://api.openai.com/v1/embeddings"
    assert embeddings_url("http://vllm:8000/v1") == "http://vllm:8000/v1/embeddings"
    assert embeddings_url("http://gw/openai/v1/") == "http://gw/openai/v1/embeddings"


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_openai_success_reorders_by_index_and_normalises(embedding_server, suffix):
    texts = [f"text number {i}" for i in range(7)]
    embedder = client(embedding_server, base_url=embedding_server.url + suffix)
    vectors = embedder.embed(texts)
    assert len(vectors) == 7
    for text, vector in zip(texts, vectors, strict=True):
        assert vector == pytest.approx(normalised(fake_vector(text, 8)))
        assert math.sqrt(sum(v * v for v in vector)) == pytest.approx(1.0)
    assert embedder.dimension == 8
    assert embedder.name == "openai:text-embedding-3-small"
    assert isinstance(embedder, Embedder)
    (request,) = embedding_server.requests
    assert request["path"] == "/v1/embeddings"
    assert request["body"] == {"model": "text-embedding-3-small", "input": texts}


def test_openai_batches_requests(embedding_server):
    texts = [f"t{i}" for i in range(10)]
    vectors = client(embedding_server, batch_size=4).embed(texts)
    assert [len(r["body"]["input"]) for r in embedding_server.requests] == [4, 4, 2]
    assert vectors == [pytest.approx(normalised(fake_vector(t, 8))) for t in texts]


def test_openai_auth_header(embedding_server):
    client(embedding_server, api_key="sk-test-123").embed(["a"])
    client(embedding_server, api_key="").embed(["b"])
    with_key, without_key = embedding_server.requests
    assert with_key["headers"]["Authorization"] == "Bearer sk-test-123"
    assert "Authorization" not in without_key["headers"]


def test_openai_retries_500_then_succeeds(embedding_server):
    embedding_server.plan = [("status", 500, {"error": {"message": "boom"}})]
    vectors = client(embedding_server).embed(["x", "y"])
    assert len(vectors) == 2
    assert len(embedding_server.requests) == 2


def test_openai_retries_429(embedding_server):
    embedding_server.plan = [
        ("status", 429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "0"}),
        ("status", 429, {"error": {"message": "Rate limit reached"}}),
    ]
    vectors = client(embedding_server).embed(["x"])
    assert len(vectors) == 1
    assert len(embedding_server.requests) == 3


def test_openai_persistent_503_is_transient(embedding_server):
    embedding_server.plan = [("status", 503, "Service Unavailable")] * 10
    with pytest.raises(EmbeddingError) as caught:
        client(embedding_server, max_retries=2).embed(["x"])
    assert caught.value.transient is True
    assert caught.value.code == "embedding_failed"
    assert "503" in caught.value.message
    assert len(embedding_server.requests) == 3  # first try + 2 retries


def test_openai_400_is_permanent_with_the_servers_message(embedding_server):
    message = "This model's maximum context length is 8192 tokens"
    embedding_server.plan = [("status", 400, {"error": {"message": message, "type": "invalid_request_error"}})]
    with pytest.raises(EmbeddingError) as caught:
        client(embedding_server).embed(["x"])
    assert caught.value.transient is False
    assert message in caught.value.message
    assert "400" in caught.value.message
    assert len(embedding_server.requests) == 1  # not retried


def test_openai_401_is_permanent(embedding_server):
    embedding_server.plan = [("status", 401, {"error": {"message": "Incorrect API key provided"}})]
    with pytest.raises(EmbeddingError) as caught:
        client(embedding_server, api_key="wrong").embed(["x"])
    assert caught.value.transient is False
    assert "Incorrect API key provided" in caught.value.message


def test_openai_timeout_is_transient(embedding_server):
    embedding_server.plan = [("sleep", 1.5)] * 3
    started = time.monotonic()
    with pytest.raises(EmbeddingError) as caught:
        client(embedding_server, timeout=0.3, max_retries=1).embed(["x"])
    assert caught.value.transient is True
    assert "timed out" in caught.value.message
    assert len(embedding_server.requests) == 2
    assert time.monotonic() - started < 3


def test_openai_connection_refused_is_transient():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    embedder = OpenAIEmbedder(base_url=f"http://127.0.0.1:{port}", model="m", max_retries=1, backoff_base=0.01)
    with pytest.raises(EmbeddingError) as caught:
        embedder.embed(["x"])
    assert caught.value.transient is True


def test_openai_dimension_probed_and_checked(embedding_server):
    embedder = client(embedding_server)
    assert embedder.dimension == 8  # asked the server once
    assert len(embedding_server.requests) == 1
    embedding_server.dimension = 16
    with pytest.raises(EmbeddingError) as caught:
        embedder.embed(["x"])
    assert "dimension" in caught.value.message
    assert caught.value.transient is False


def test_openai_wrong_number_of_embeddings_is_an_error(embedding_server):
    embedding_server.plan = [("status", 200, {"data": [{"index": 0, "embedding": [1.0, 0.0]}]})]
    with pytest.raises(EmbeddingError):
        client(embedding_server).embed(["x", "y"])


def test_get_embedder_openai_from_settings_and_embed_texts_progress(embedding_server, settings):
    settings.EMBEDDING_PROVIDER = "openai"
    settings.OPENAI_EMBEDDING_BASE_URL = embedding_server.url
    settings.OPENAI_EMBEDDING_API_KEY = "sk-settings"
    settings.OPENAI_EMBEDDING_MODEL = "bge-m3"
    settings.EMBEDDING_BATCH_SIZE = 3
    settings.EMBEDDING_TIMEOUT = 5.0
    settings.EMBEDDING_MAX_RETRIES = 0
    embedder = get_embedder()
    assert embedder.name == "openai:bge-m3"
    assert get_embedder() is embedder  # cached per configuration

    calls: list[tuple[int, int]] = []
    texts = [f"doc {i}" for i in range(7)]
    vectors = embed_texts(texts, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(3, 7), (6, 7), (7, 7)]
    assert [len(r["body"]["input"]) for r in embedding_server.requests] == [3, 3, 1]
    assert all(r["headers"]["Authorization"] == "Bearer sk-settings" for r in embedding_server.requests)
    assert vectors == [pytest.approx(normalised(fake_vector(t, 8))) for t in texts]
    assert embed_texts([]) == []


def test_get_embedder_rejects_bad_configuration(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.EMBEDDING_PROVIDER = "word2vec"
    with pytest.raises(ImproperlyConfigured):
        get_embedder()
    settings.EMBEDDING_PROVIDER = "openai"
    settings.OPENAI_EMBEDDING_BASE_URL = ""
    with pytest.raises(ImproperlyConfigured):
        get_embedder()


# --------------------------------------------------------------------------------------
# local provider: the real USE multilingual v3 model
# --------------------------------------------------------------------------------------
@pytest.fixture
def local_embedder(settings) -> Embedder:
    settings.EMBEDDING_PROVIDER = "local"
    return get_embedder()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # both are unit vectors


def test_local_embedder_shape_and_normalisation(local_embedder):
    assert isinstance(local_embedder, LocalEmbedder)
    assert local_embedder.name == "local:use-multilingual-v3"
    assert local_embedder.dimension == 512
    vectors = local_embedder.embed(["How do I reset my password?", "如何重置我的密码？", "短"])
    assert len(vectors) == 3
    for vector in vectors:
        assert len(vector) == 512
        assert all(isinstance(v, float) for v in vector)
        assert math.sqrt(sum(v * v for v in vector)) == pytest.approx(1.0, abs=1e-6)
    assert local_embedder.embed([]) == []
    assert get_embedder() is local_embedder  # loaded once per process


def test_local_embedder_is_cross_lingual(local_embedder):
    english, chinese, weather, weather_zh = local_embedder.embed(
        ["How do I reset my password?", "如何重置我的密码？", "The weather is nice today", "今天天气很好"]
    )
    assert cosine(english, chinese) > cosine(english, weather) + 0.3
    assert cosine(chinese, english) > cosine(chinese, weather_zh) + 0.3
    assert cosine(weather, weather_zh) > cosine(weather, chinese) + 0.3


def test_local_embedder_is_deterministic_and_order_preserving(local_embedder):
    texts = ["退款需要几天？", "Refunds take 5 business days.", "Our office is in Shanghai."]
    forward = local_embedder.embed(texts)
    backward = local_embedder.embed(list(reversed(texts)))
    for a, b in zip(forward, reversed(backward), strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    assert local_embedder.embed(texts) == forward


def test_embed_texts_local_batches_and_reports_progress(local_embedder, settings):
    settings.EMBEDDING_BATCH_SIZE = 4
    calls: list[tuple[int, int]] = []
    texts = [f"第{i}个问题：如何导出报表？" for i in range(10)]
    vectors = embed_texts(texts, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 10), (8, 10), (10, 10)]
    assert len(vectors) == 10
    assert vectors[3] == pytest.approx(local_embedder.embed([texts[3]])[0], abs=1e-5)


def test_local_model_loads_and_runs_with_the_network_blocked(tmp_path):
    """In a fresh interpreter where every socket operation raises (audit hook) and the hub
    offline flags are set, importing and using the local model still works: the weights
    and the tokenizer come from the installed package."""
    script = textwrap.dedent(
        """
        import sys

        def deny_network(event, args):
            if event.startswith(("socket.", "urllib.")) or event == "http.client.connect":
                raise RuntimeError(f"network access attempted: {event} {args!r}")

        sys.addaudithook(deny_network)
        from apps.knowledge.pipeline.embed import LocalEmbedder
        from apps.knowledge.pipeline.chunk import token_count

        vectors = LocalEmbedder().embed(["How do I reset my password?", "如何重置我的密码？"])
        print(len(vectors), len(vectors[0]), round(sum(a * b for a, b in zip(*vectors)), 3), token_count("hi"))
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(BASE_DIR),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache"),
    }
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    count, dimension, similarity, tokens = result.stdout.split()
    assert (count, dimension, tokens) == ("2", "512", "1")
    assert float(similarity) > 0.6
