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
import threading
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
_client_lock = threading.Lock()
_clients: dict[str, Any] = {}
_ready: set[tuple[str, str]] = set()


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

    lock = get_redis_connection("default").lock(
        "zhida:milvus:write", timeout=settings.MILVUS_WRITE_LOCK_TIMEOUT, blocking_timeout=settings.MILVUS_TIMEOUT * 4
    )
    if not lock.acquire():
        raise VectorStoreError("Timed out waiting for the vector write lock.")
    try:
        yield
    finally:
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
    A collection made for another dimension is a configuration error, said plainly."""
    name = settings.MILVUS_COLLECTION
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
    return name


def collection_exists() -> bool:
    with _milvus_errors():
        return _client().has_collection(settings.MILVUS_COLLECTION)


def collection_drop() -> None:
    """Drop the whole collection, every tenant's vectors with it (evaluation collections)."""
    name = settings.MILVUS_COLLECTION
    with vector_write_lock(), _milvus_errors():
        _client().drop_collection(name)
    for key in [k for k in _ready if k[0] == name]:
        _ready.discard(key)


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
    with vector_write_lock():
        partition = _partition_ensure(client, name, tenant_key)
        with _milvus_errors():
            kwargs = {"partition_name": partition} if partition else {}
            client.upsert(name, data, **kwargs)
    return len(data)


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
    """Delete a document's vectors in this tenant (optionally all but ``keep_ids``).

    Looks the ids up first (a query inside the tenant's partition is cheap) and deletes by
    primary key: a *filter* delete makes Milvus Lite scan every tenant's rows, which cost
    ~0.25 s per document at a few thousand vectors and grew with the platform
    (bench/README.md, ingestion)."""
    name = settings.MILVUS_COLLECTION
    client = _client()
    with _milvus_errors():
        if not client.has_collection(name):
            return
    keep = set(keep_ids or [])
    with vector_write_lock():
        partition = _partition_ensure(client, name, tenant_key)
        with _milvus_errors():
            doomed = [
                i for i in _document_vector_ids(client, name, tenant_key, document_id, partition) if i not in keep
            ]
            kwargs = {"partition_name": partition} if partition else {}
            for start in range(0, len(doomed), 1000):
                client.delete(name, ids=doomed[start : start + 1000], **kwargs)


def vectors_count(*, tenant_key: str, document_id: str | None = None) -> int:
    name = settings.MILVUS_COLLECTION
    client = _client()
    with _milvus_errors():
        if not client.has_collection(name):
            return 0
        extra = f"document_id == {json.dumps(document_id)}" if document_id else ""
        partition = _partition_ensure(client, name, tenant_key)
        kwargs = {"partition_names": [partition]} if partition else {}
        rows = client.query(name, filter=_tenant_filter(tenant_key, extra), output_fields=["count(*)"], **kwargs)
    return int(rows[0]["count(*)"]) if rows else 0


def vectors_ids_by_document(*, tenant_key: str) -> dict[str, set[str]]:
    """Every vector id of a tenant, grouped by document (iterated in batches)."""
    name = settings.MILVUS_COLLECTION
    client = _client()
    result: dict[str, set[str]] = {}
    with _milvus_errors():
        if not client.has_collection(name):
            return result
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


def vectors_delete_ids(*, tenant_key: str, ids: list[str]) -> None:
    if not ids:
        return
    name = settings.MILVUS_COLLECTION
    client = _client()
    with vector_write_lock():
        partition = _partition_ensure(client, name, tenant_key)
        with _milvus_errors():
            kwargs = {"partition_name": partition} if partition else {}
            # By primary key (see vectors_delete); callers pass ids read from this tenant.
            for start in range(0, len(ids), 1000):
                client.delete(name, ids=ids[start : start + 1000], **kwargs)


def vectors_tenant_drop(*, tenant_key: str) -> None:
    """Remove every vector of a tenant: its partition on Lite, its rows on a server
    (partition key). For a tenant that is being destroyed, never for a live one."""
    name = settings.MILVUS_COLLECTION
    client = _client()
    with _milvus_errors():
        if not client.has_collection(name):
            return
    with vector_write_lock(), _milvus_errors():
        if is_lite():
            partition = partition_name(tenant_key)
            if client.has_partition(name, partition):
                client.drop_partition(name, partition)
            _ready.discard((name, partition))
        else:
            client.delete(name, filter=_tenant_filter(tenant_key))


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
    name = settings.MILVUS_COLLECTION
    client = _client()
    with _milvus_errors():
        if not client.has_collection(name):
            return []
        extra = f"document_id in {json.dumps(document_ids)}" if document_ids else ""
        partition = _partition_ensure(client, name, tenant_key)
        kwargs = {"partition_names": [partition]} if partition else {}
        result = client.search(
            name,
            data=data,
            anns_field=anns_field,
            limit=limit,
            filter=_tenant_filter(tenant_key, extra),  # always, partition or not
            output_fields=["document_id"],
            search_params=params,
            **kwargs,
        )
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
