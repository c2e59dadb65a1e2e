"""The Milvus collection that holds every tenant's chunk vectors (seed: document_vectors).

Facts measured for this design (see the ingestion issue):
* Only one process may open a Milvus Lite data dir, so Lite runs as ONE server process and
  everything talks to it over gRPC (MILVUS_URI).
* Concurrent writers followed by a kill -9 lost rows on Lite; a single writer lost none.
  Every write therefore goes through ``vector_write_lock`` (a Redis lock), whatever the
  Celery layout.
* On Lite a filter on tenant_id alone scans every row; a partition per tenant does not. So:
  Lite → one partition per tenant; a server → the partition key on tenant_id. Searches
  always filter on tenant_id as well.
* FLAT/COSINE on Lite (IVF_PQ/DISKANN/SCANN are accepted by Lite but then the collection
  cannot be loaded after a restart); HNSW on a server.

Fields: the seed's (id, tenant_id, document_id, chunk_id, vector, content, metadata), plus
``sparse``: BM25 over ``content`` (jieba analyzer) computed by Milvus itself, so hybrid
search needs no second index and no reindex later.
"""

from __future__ import annotations

import contextlib
import functools
import json
import queue
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from apps.knowledge.pipeline.types import PipelineError

CONTENT_MAX_BYTES = 65535
# BM25 analyzer: jieba for Chinese (and whitespace-separated latin), lower-cased, with the
# commonest function words dropped so "how do I ..." does not match everything.
BM25_STOP_WORDS = [
    "a",
    "an",
    "and",
    "are",
    "as",
    "at",
    "be",
    "by",
    "can",
    "do",
    "does",
    "for",
    "from",
    "how",
    "i",
    "in",
    "is",
    "it",
    "my",
    "of",
    "on",
    "or",
    "the",
    "to",
    "what",
    "when",
    "where",
    "which",
    "who",
    "why",
    "will",
    "with",
    "you",
    "your",
    "的",
    "了",
    "是",
    "在",
    "和",
    "与",
    "或",
    "吗",
    "呢",
    "吧",
    "啊",
    "我",
    "你",
    "他",
    "她",
    "它",
    "们",
    "这",
    "那",
    "有",
    "个",
    "及",
    "之",
    "为",
    "把",
    "被",
    "让",
    "什么",
    "怎么",
    "如何",
]
ANALYZER_PARAMS = {
    "tokenizer": "jieba",
    "filter": ["lowercase", {"type": "stop", "stop_words": BM25_STOP_WORDS}],
}
# The lock is a lease: held for LOCK_LEASE seconds at a time and renewed by the holder
# while it writes (up to MILVUS_WRITE_LOCK_TIMEOUT in all), so a writer killed while
# holding it (SIGKILL, OOM) blocks the others for seconds, not minutes.
LOCK_LEASE = 15.0
_client_lock = threading.Lock()
_clients: dict[str, Any] = {}
# Per-process caches of what this process has seen in Milvus, so the write and search
# paths do not ask again on every call: partitions created (name, partition), collections
# known to exist (uri, name) and collections ensured for a dimension (uri, name, dim).
# Forgotten on any Milvus error in those paths, on collection_drop and on client_reset.
_ready: set[tuple[str, str]] = set()
_existing: set[tuple[str, str]] = set()
_ensured: set[tuple[str, str, int]] = set()


class VectorStoreError(PipelineError):
    code = "vector_store_unavailable"
    transient = True


@dataclass(frozen=True)
class VectorRow:
    id: str
    document_id: str
    chunk_id: str
    vector: list[float]
    content: str
    metadata: dict[str, Any]


def is_lite() -> bool:
    return settings.MILVUS_MODE == "lite"


def partition_name(tenant_key: str) -> str:
    return "t_" + tenant_key.replace("-", "")


def _client():
    from pymilvus import MilvusClient

    uri = settings.MILVUS_URI
    with _client_lock:
        client = _clients.get(uri)
        if client is None:
            with _milvus_errors():  # the constructor connects: a server that is down is transient
                client = MilvusClient(uri=uri, token=settings.MILVUS_TOKEN, timeout=settings.MILVUS_TIMEOUT)
            _clients[uri] = client
        return client


def client_reset() -> None:
    """Forget cached clients (tests that restart or move the server)."""
    with _client_lock:
        for client in _clients.values():
            with contextlib.suppress(Exception):
                client.close()
        _clients.clear()
        _ready.clear()
        _existing.clear()
        _ensured.clear()


def client_forget(*, uri: str | None = None) -> None:
    """Close the cached client of ``uri`` only (none if ``None``) and forget the partitions
    seen, which are cached per collection name, not per server. For tests that run a Milvus
    server of their own beside the session's: ``client_reset`` would also close the session
    server's client, and a new client on pymilvus's shared channel after a minute of idleness
    was refused ("too many pings"), while a kept client recovers."""
    with _client_lock:
        client = _clients.pop(uri, None) if uri else None
        _ready.clear()
        for key in [k for k in _existing if k[0] == uri]:
            _existing.discard(key)
        for key in [k for k in _ensured if k[0] == uri]:
            _ensured.discard(key)
    if client is not None:
        with contextlib.suppress(Exception):
            client.close()


def _forget(name: str) -> None:
    """Drop what this process believes about collection ``name`` (after an error: it may
    have been dropped or recreated by another process, or the server restarted)."""
    for key in [k for k in _ready if k[0] == name]:
        _ready.discard(key)
    for key in [k for k in _existing if k[1] == name]:
        _existing.discard(key)
    for key in [k for k in _ensured if k[1] == name]:
        _ensured.discard(key)


@contextlib.contextmanager
def _milvus_errors() -> Iterator[None]:
    import grpc
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        transient = code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED,
        )
        detail = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        raise VectorStoreError(f"Milvus error at {settings.MILVUS_URI}: {detail}", transient=transient) from exc
    except MilvusException as exc:
        raise VectorStoreError(f"Milvus error: {exc.message if hasattr(exc, 'message') else exc}") from exc
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise VectorStoreError(f"Milvus unreachable at {settings.MILVUS_URI}: {exc}") from exc


@contextlib.contextmanager
def vector_write_lock() -> Iterator[None]:
    """One writer at a time across every process (see module docstring)."""
    from django_redis import get_redis_connection

    lease = min(LOCK_LEASE, float(settings.MILVUS_WRITE_LOCK_TIMEOUT))
    lock = get_redis_connection("default").lock(
        "zhida:milvus:write",
        timeout=lease,
        blocking_timeout=settings.MILVUS_TIMEOUT * 4,
        thread_local=False,  # renewed from the keeper thread below
    )
    if not lock.acquire():
        raise VectorStoreError("Timed out waiting for the vector write lock.")
    released = threading.Event()

    def keep() -> None:
        deadline = time.monotonic() + settings.MILVUS_WRITE_LOCK_TIMEOUT
        while not released.wait(lease / 3) and time.monotonic() + lease / 3 < deadline:
            with contextlib.suppress(Exception):  # lost it: the writer's own RPC decides
                lock.reacquire()

    keeper = threading.Thread(target=keep, name="milvus-write-lease", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        released.set()
        keeper.join()
        with contextlib.suppress(Exception):
            lock.release()


def _schema(dimension: int):
    from pymilvus import DataType, Function, FunctionType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, max_length=100, is_primary=True)
    schema.add_field("tenant_id", DataType.VARCHAR, max_length=64, is_partition_key=not is_lite())
    schema.add_field("document_id", DataType.VARCHAR, max_length=36)
    schema.add_field("chunk_id", DataType.VARCHAR, max_length=36)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
    schema.add_field(
        "content",
        DataType.VARCHAR,
        max_length=CONTENT_MAX_BYTES,
        enable_analyzer=True,
        analyzer_params=ANALYZER_PARAMS,
    )
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("metadata", DataType.JSON)
    schema.add_function(
        Function(
            name="content_bm25",
            function_type=FunctionType.BM25,
            input_field_names=["content"],
            output_field_names=["sparse"],
        )
    )
    return schema


def _index_params(client):
    params = client.prepare_index_params()
    if is_lite():
        params.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
    else:
        params.add_index(
            field_name="vector", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200}
        )
    params.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    return params


def collection_ensure(*, dimension: int) -> str:
    """Create the collection if missing (dimension from the embedding provider) and load it.
    A collection made for another dimension is a configuration error, said plainly.
    Once per process (3 RPCs): later calls for the same dimension return at once."""
    name = settings.MILVUS_COLLECTION
    if (settings.MILVUS_URI, name, dimension) in _ensured:
        return name
    client = _client()
    with _milvus_errors():
        if not client.has_collection(name):
            client.create_collection(name, schema=_schema(dimension), index_params=_index_params(client))
        else:
            fields = {f["name"]: f for f in client.describe_collection(name)["fields"]}
            existing = int(fields["vector"]["params"]["dim"])
            if existing != dimension:
                raise PipelineError(
                    f"The vector collection '{name}' holds {existing}-dimensional vectors but the embedding "
                    f"provider makes {dimension}-dimensional ones. Point MILVUS_COLLECTION at a new collection "
                    "and reindex.",
                    code="embedding_dimension_mismatch",
                    transient=False,
                )
        client.load_collection(name)
    _ensured.add((settings.MILVUS_URI, name, dimension))
    _existing.add((settings.MILVUS_URI, name))
    return name


def collection_exists() -> bool:
    with _milvus_errors():
        return _client().has_collection(settings.MILVUS_COLLECTION)


def _collection_known(client, name: str) -> bool:
    """Whether the collection exists, asked once per process while it does."""
    key = (settings.MILVUS_URI, name)
    if key in _existing:
        return True
    with _milvus_errors():
        exists = bool(client.has_collection(name))
    if exists:
        _existing.add(key)
    return exists


def _on_collection(default: Any, call: Any) -> Any:
    """``call(client, name)`` if the collection exists, else ``default``. The existence is
    cached; when the call fails the cache is dropped and, if the collection turns out to be
    gone (dropped by another process), the answer is ``default`` as if it had been asked."""
    name = settings.MILVUS_COLLECTION
    client = _client()
    if not _collection_known(client, name):
        return default
    try:
        with _milvus_errors():
            return call(client, name)
    except VectorStoreError:
        _forget(name)
        if not collection_exists():
            return default
        raise


def collection_drop() -> None:
    """Drop the whole collection, every tenant's vectors with it (evaluation collections)."""
    name = settings.MILVUS_COLLECTION
    try:
        with vector_write_lock(), _milvus_errors():
            _client().drop_collection(name)
    finally:
        _forget(name)


def collection_flush() -> None:
    """Seal what Milvus holds in its write buffer. Milvus Lite rebuilds the buffer's BM25
    index on every search, so search time grows with unflushed rows; sealed segments keep
    theirs (but score BM25 with per-segment statistics)."""
    name = settings.MILVUS_COLLECTION
    with vector_write_lock(), _milvus_errors():
        _client().flush(name)


def _partition_ensure(client, name: str, tenant_key: str) -> str | None:
    if not is_lite():
        return None
    partition = partition_name(tenant_key)
    if (name, partition) not in _ready:
        with _milvus_errors():
            if not client.has_partition(name, partition):
                client.create_partition(name, partition)
                client.load_collection(name)  # Lite loads whole collections only
        _ready.add((name, partition))
    return partition


def _content_fit(text: str) -> str:
    data = text.encode("utf-8")
    if len(data) <= CONTENT_MAX_BYTES:
        return text
    return data[: CONTENT_MAX_BYTES - 4].decode("utf-8", errors="ignore")


def _tenant_filter(tenant_key: str, extra: str = "") -> str:
    expr = f"tenant_id == {json.dumps(tenant_key)}"
    return f"{expr} and ({extra})" if extra else expr


def vectors_upsert(*, tenant_key: str, rows: list[VectorRow], dimension: int) -> int:
    """Upsert rows (deterministic ids make a retry a no-op)."""
    if not rows:
        return 0
    name = collection_ensure(dimension=dimension)
    client = _client()
    data = [
        {
            "id": r.id,
            "tenant_id": tenant_key,
            "document_id": r.document_id,
            "chunk_id": r.chunk_id,
            "vector": r.vector,
            "content": _content_fit(text_normalize(r.content)),
            "metadata": r.metadata,
        }
        for r in rows
    ]
    try:
        with vector_write_lock():
            partition = _partition_ensure(client, name, tenant_key)
            with _milvus_errors():
                kwargs = {"partition_name": partition} if partition else {}
                client.upsert(name, data, **kwargs)
    except VectorStoreError:
        _forget(name)  # the collection or partition may be gone: ensure them again next time
        raise
    return len(data)


class VectorWriter:
    """Upserts a document's rows from a background thread, so that Milvus (BM25 analysis of
    every chunk, in its own process) works while the caller embeds the next batch.

    ``put(rows)`` queues rows (blocking while ``max_pending`` batches wait: memory stays
    bounded) and raises at once the error of an earlier upsert, so a document whose writes
    fail stops embedding. ``close()`` waits until everything queued is written and raises
    that error if there was one. Used as a context manager, an exception in the caller
    drops what is still queued and waits for the upsert in flight, so no write of this
    document happens after the block. The rows go through ``vectors_upsert``: same
    serialised path (the write lock), same errors, same retries as a direct call.
    Rows waiting together are sent in one upsert of up to ``batch_rows``."""

    def __init__(self, *, tenant_key: str, max_pending: int = 2, batch_rows: int = 256) -> None:
        self.tenant_key = tenant_key
        self.batch_rows = batch_rows
        self.rows_written = 0
        self.upserts = 0
        self.seconds = 0.0  # spent in vectors_upsert (in the background)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_pending))
        self._error: BaseException | None = None
        self._cancelled = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def put(self, rows: list[VectorRow]) -> None:
        self._raise_error()
        if not rows:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vector-writer", daemon=True)
            self._thread.start()
        while True:
            try:
                self._queue.put(list(rows), timeout=0.5)
                return
            except queue.Full:
                self._raise_error()  # the thread stopped taking rows

    def close(self) -> None:
        """Wait for every queued row to be written; raise the first upsert error."""
        self._stop()
        self._raise_error()

    def abort(self) -> None:
        """Drop the rows still queued and wait for the upsert in flight (errors ignored)."""
        self._cancelled = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._stop()

    def _stop(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            rows = item
            while len(rows) < self.batch_rows:  # whatever else is waiting goes in the same upsert
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                rows.extend(more)
            if self._cancelled or self._error is not None:
                continue  # keep draining so put() and _stop() never block
            started = time.perf_counter()
            try:
                self.rows_written += vectors_upsert(
                    tenant_key=self.tenant_key, rows=rows, dimension=len(rows[0].vector)
                )
                self.upserts += 1
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self._error = exc
            finally:
                self.seconds += time.perf_counter() - started


def _document_vector_ids(client, name: str, tenant_key: str, document_id: str, partition: str | None) -> list[str]:
    kwargs = {"partition_names": [partition]} if partition else {}
    rows = client.query(
        name,
        filter=_tenant_filter(tenant_key, f"document_id == {json.dumps(document_id)}"),
        output_fields=["id"],
        **kwargs,
    )
    return [str(r["id"]) for r in rows]


def vectors_delete(*, tenant_key: str, document_id: str, keep_ids: list[str] | None = None) -> None:
    """Delete a document's vectors in this tenant (optionally all but ``keep_ids``), whatever
    their ids: looks them up with a query, then deletes by primary key.

    The query scans the tenant's whole partition (~0.2 s at a few thousand rows, growing
    with the tenant's knowledge base; a *filter* delete would scan every tenant's rows):
    when the ids are known, ``vectors_delete_ids`` costs a millisecond or two. This is for
    callers that cannot know them (old task messages, test clean-up)."""
    keep = set(keep_ids or [])

    def delete(client, name: str) -> None:
        with vector_write_lock():
            partition = _partition_ensure(client, name, tenant_key)
            with _milvus_errors():
                doomed = [
                    i for i in _document_vector_ids(client, name, tenant_key, document_id, partition) if i not in keep
                ]
                kwargs = {"partition_name": partition} if partition else {}
                for start in range(0, len(doomed), 1000):
                    client.delete(name, ids=doomed[start : start + 1000], **kwargs)

    _on_collection(None, delete)


def vectors_count(*, tenant_key: str, document_id: str | None = None) -> int:
    def count(client, name: str) -> int:
        extra = f"document_id == {json.dumps(document_id)}" if document_id else ""
        partition = _partition_ensure(client, name, tenant_key)
        kwargs = {"partition_names": [partition]} if partition else {}
        rows = client.query(name, filter=_tenant_filter(tenant_key, extra), output_fields=["count(*)"], **kwargs)
        return int(rows[0]["count(*)"]) if rows else 0

    return _on_collection(0, count)


def vectors_ids_by_document(*, tenant_key: str) -> dict[str, set[str]]:
    """Every vector id of a tenant, grouped by document (iterated in batches)."""

    def ids(client, name: str) -> dict[str, set[str]]:
        result: dict[str, set[str]] = {}
        partition = _partition_ensure(client, name, tenant_key)
        kwargs = {"partition_names": [partition]} if partition else {}
        iterator = client.query_iterator(
            name, batch_size=1000, filter=_tenant_filter(tenant_key), output_fields=["id", "document_id"], **kwargs
        )
        try:
            while True:
                batch = iterator.next()
                if not batch:
                    break
                for row in batch:
                    result.setdefault(row["document_id"], set()).add(row["id"])
        finally:
            iterator.close()
        return result

    return _on_collection({}, ids)


def vectors_delete_ids(*, tenant_key: str, ids: list[str]) -> None:
    """Delete vectors by primary key (1–2 ms whatever the collection holds; ids that are not
    there are no error). Callers pass ids of this tenant: read from it, or the deterministic
    ids of its documents' chunks."""
    if not ids:
        return

    def delete(client, name: str) -> None:
        with vector_write_lock():
            partition = _partition_ensure(client, name, tenant_key)
            with _milvus_errors():
                kwargs = {"partition_name": partition} if partition else {}
                for start in range(0, len(ids), 1000):
                    client.delete(name, ids=ids[start : start + 1000], **kwargs)

    _on_collection(None, delete)


def vectors_tenant_drop(*, tenant_key: str) -> None:
    """Remove every vector of a tenant: its partition on Lite, its rows on a server
    (partition key). For a tenant that is being destroyed, never for a live one."""

    def drop(client, name: str) -> None:
        with vector_write_lock():
            if is_lite():
                partition = partition_name(tenant_key)
                _ready.discard((name, partition))
                if client.has_partition(name, partition):
                    client.drop_partition(name, partition)
            else:
                client.delete(name, filter=_tenant_filter(tenant_key))

    _on_collection(None, drop)


def text_normalize(text: str) -> str:
    """What BM25 sees, for chunks and queries alike: Traditional Chinese folded to
    Simplified (OpenCC t2s), so either script finds the other's documents."""
    return _t2s().convert(text)


def bm25_query_normalize(text: str) -> str:
    """What a BM25 query is made of: ``text_normalize`` with punctuation and symbols turned
    into spaces. jieba keeps them as tokens ("？", "“", "-"), and on a page where they are rare
    they weigh like a rare word: a Chinese question over English passages matched English
    FAQ pages on their quotation marks alone. Done on the query only, so no reindex."""
    folded = text_normalize(text)
    return "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in folded)


@functools.cache
def jieba_tokenizer():
    """jieba's tokenizer, loaded once and quietly (it logs at DEBUG on first use)."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    tokenizer = jieba.Tokenizer()
    tokenizer.initialize()
    return tokenizer


@functools.cache
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


@dataclass(frozen=True)
class VectorHit:
    id: str
    document_id: str
    score: float


def _search(
    *, tenant_key: str, data: list, anns_field: str, limit: int, document_ids: list[str] | None, params: dict
) -> list[VectorHit]:
    extra = f"document_id in {json.dumps(document_ids)}" if document_ids else ""

    def search(client, name: str) -> list:
        partition = _partition_ensure(client, name, tenant_key)
        kwargs = {"partition_names": [partition]} if partition else {}
        return client.search(
            name,
            data=data,
            anns_field=anns_field,
            limit=limit,
            filter=_tenant_filter(tenant_key, extra),  # always, partition or not
            output_fields=["document_id"],
            search_params=params,
            **kwargs,
        )

    result = _on_collection([], search)  # no collection yet: nothing indexed, no hits
    hits = result[0] if result else []
    return [
        VectorHit(id=str(h["id"]), document_id=h["entity"]["document_id"], score=float(h["distance"])) for h in hits
    ]


def vectors_search_dense(
    *, tenant_key: str, vector: list[float], limit: int, document_ids: list[str] | None = None
) -> list[VectorHit]:
    """Nearest chunks by cosine similarity (higher is closer)."""
    params = {"metric_type": "COSINE"} if is_lite() else {"metric_type": "COSINE", "params": {"ef": max(64, limit)}}
    return _search(
        tenant_key=tenant_key,
        data=[vector],
        anns_field="vector",
        limit=limit,
        document_ids=document_ids,
        params=params,
    )


def vectors_search_bm25(
    *, tenant_key: str, text: str, limit: int, document_ids: list[str] | None = None
) -> list[VectorHit]:
    """Chunks by BM25 over the jieba-analysed content. Scores are only comparable within one
    result list (Lite's are negative): compare them within the list (search.fuse divides by
    the best one), never with a fixed threshold."""
    query = bm25_query_normalize(text)
    if not query.strip():
        return []
    return _search(
        tenant_key=tenant_key,
        data=[query],
        anns_field="sparse",
        limit=limit,
        document_ids=document_ids,
        params={"metric_type": "BM25"},
    )
