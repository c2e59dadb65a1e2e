"""The Milvus collection(s) that hold every tenant's chunk vectors (seed: document_vectors).

Facts measured for this design (see the ingestion issue):
* Only one process may open a Milvus Lite data dir, so Lite runs as ONE server process and
  everything talks to it over gRPC (MILVUS_URI).
* Concurrent writers followed by a kill -9 lost rows on Lite; a single writer lost none.
  Every write therefore goes through ``vector_write_lock`` (a Redis lock), whatever the
  Celery layout.
* On a Milvus server: ONE collection, the partition key on tenant_id, HNSW. Searches always
  filter on tenant_id as well.
* On Milvus Lite: ONE COLLECTION PER TENANT (``<MILVUS_COLLECTION>__t_<tenant key>``), FLAT,
  still filtered on tenant_id, and sealed at the end of a document once
  MILVUS_LITE_SEAL_ROWS rows await sealing (``vectors_commit``).
  The seed (and the ingestion issue) asked for a partition per tenant in one collection;
  Milvus Lite 3.x, the version we ship, is a pure-Python engine, and measuring it showed
  why that layout does not hold up (bench/README.md, "Milvus Lite layout"):
  - every search walks every segment of the *collection* in Python (to resolve the newest
    version of each primary key), whatever partition it asks for, so each tenant's search
    grew with every other tenant's rows: 0.2 ms per partition per search before, a few ms
    whatever the number of tenants now;
  - unsealed rows (the memtable, up to 128 MB per collection) are re-read and, for BM25,
    re-indexed on every search: 2,000 unsealed chunks cost 64 ms (dense) and 172 ms (BM25)
    per search, 3.7 ms each once sealed. So a collection is sealed (a flush, ~8 ms) at the
    end of every document, and Lite's own size-tiered compaction merges the small segments
    (every file under 1 MB once four of them exist);
  - Lite scores its BM25 function with each segment's own statistics (its TODO; a server
    aggregates them), and segments sealed this way are runs of documents in upload order:
    BM25 lost up to five points of recall. So BM25 is no longer Milvus's function: the
    ``sparse`` field holds weights we compute with the tenant's own statistics
    (apps/knowledge/bm25.py), scored by inner product, the same on Lite and on a server.
    MILVUS_LITE_SEAL_ROWS keeps the sealing knob (1: every document);
  - a flush seals the whole collection: with one collection it would have cut every
    tenant's unsealed rows into a segment at each document of any tenant.
  IVF_PQ/DISKANN/SCANN are never used on Lite (accepted, then the collection cannot be
  loaded after a restart).

Fields: the seed's (id, tenant_id, document_id, chunk_id, vector, content, metadata), plus
``sparse``: the chunk's BM25 term weights (``bm25.document_vector``), SPARSE_INVERTED_INDEX
with the IP metric; a query's IDF weights (``bm25.query_vector``) make the inner product the
BM25 score. Collections made when ``sparse`` was the output of Milvus's BM25 function are
refused (``collection_ensure``): their scores would not be comparable.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from apps.knowledge.pipeline.types import PipelineError

CONTENT_MAX_BYTES = 65535
# BM25 (apps/knowledge/bm25.py): jieba for Chinese (and whitespace-separated latin),
# lower-cased, with the commonest function words dropped so "how do I ..." does not match
# everything.
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
# The sparse vector of a chunk without BM25 terms (only emoji, say): Milvus refuses empty
# ones, and no query weighs this dimension (bm25.MAX_TERM_ID is below it).
NO_TERMS = {2**32 - 2: 1.0}
# The lock is a lease: held for LOCK_LEASE seconds at a time and renewed by the holder
# while it writes (up to MILVUS_WRITE_LOCK_TIMEOUT in all), so a writer killed while
# holding it (SIGKILL, OOM) blocks the others for seconds, not minutes.
LOCK_LEASE = 15.0
LOCK_POLL = 0.005
_client_lock = threading.Lock()
_clients: dict[str, Any] = {}
# Lite: a tenant's collection is <MILVUS_COLLECTION><TENANT_COLLECTION_INFIX><key, hex>.
TENANT_COLLECTION_INFIX = "__t_"
# Per-process caches of what this process has seen in Milvus, so the write and search
# paths do not ask again on every call: collections known to exist (uri, name) and
# collections ensured for a dimension (uri, name, dim). Forgotten on any Milvus error in
# those paths, on collection_drop and on client_reset.
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
    sparse: dict[int, float] = field(default_factory=dict)  # bm25.document_vector(content, ...)


def is_lite() -> bool:
    return settings.MILVUS_MODE == "lite"


def collection_name(*, tenant_key: str) -> str:
    """Where a tenant's vectors live: its own collection on Lite (module docstring), the one
    shared collection (partition key on tenant_id) on a server."""
    base = settings.MILVUS_COLLECTION
    if not is_lite():
        return base
    slug = "".join(c for c in tenant_key if c.isascii() and c.isalnum())
    if not slug:
        raise ValueError(f"Tenant key {tenant_key!r} cannot name a collection.")
    return f"{base}{TENANT_COLLECTION_INFIX}{slug}"


def _collection_names(client) -> list[str]:
    """The base collection and, on Lite, every tenant collection under it."""
    base = settings.MILVUS_COLLECTION
    prefix = base + TENANT_COLLECTION_INFIX
    return [n for n in client.list_collections() if n == base or n.startswith(prefix)]


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
        _existing.clear()
        _ensured.clear()


def client_forget(*, uri: str | None = None) -> None:
    """Close the cached client of ``uri`` only (none if ``None``) and forget what this
    process saw of that server. For tests that run a Milvus
    server of their own beside the session's: ``client_reset`` would also close the session
    server's client, and a new client on pymilvus's shared channel after a minute of idleness
    was refused ("too many pings"), while a kept client recovers."""
    with _client_lock:
        client = _clients.pop(uri, None) if uri else None
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
        # Asked again every 5 ms while another process holds it (redis-py's default, 100 ms,
        # cost the two worker processes 11.7 s of waiting in bench/ingest.py run L).
        sleep=LOCK_POLL,
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
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, max_length=100, is_primary=True)
    schema.add_field("tenant_id", DataType.VARCHAR, max_length=64, is_partition_key=not is_lite())
    schema.add_field("document_id", DataType.VARCHAR, max_length=36)
    schema.add_field("chunk_id", DataType.VARCHAR, max_length=36)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
    schema.add_field("content", DataType.VARCHAR, max_length=CONTENT_MAX_BYTES)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)  # BM25 term weights (bm25.py)
    schema.add_field("metadata", DataType.JSON)
    return schema


def _index_params(client):
    params = client.prepare_index_params()
    if is_lite():
        params.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
    else:
        params.add_index(
            field_name="vector", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200}
        )
    params.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    return params


def collection_ensure(*, dimension: int, tenant_key: str) -> str:
    """Create the tenant's collection if missing (dimension from the embedding provider) and
    load it. A collection made for another dimension is a configuration error, said plainly.
    Once per process and collection (3 RPCs): later calls return at once."""
    name = collection_name(tenant_key=tenant_key)
    if (settings.MILVUS_URI, name, dimension) in _ensured:
        return name
    client = _client()
    with _milvus_errors():
        if not client.has_collection(name):
            client.create_collection(name, schema=_schema(dimension), index_params=_index_params(client))
        else:
            description = client.describe_collection(name)
            if _bm25_function_output(description):
                raise _outdated(name)
            fields = {f["name"]: f for f in description["fields"]}
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


def _outdated(name: str) -> VectorStoreError:
    return VectorStoreError(
        f"The vector collection '{name}' was made by an earlier version: its BM25 is Milvus's function, "
        "scored with per-segment statistics, not the tenant's. Point MILVUS_COLLECTION at a new collection "
        "and run `manage.py reconcile_vectors`, which re-embeds every tenant's chunks into it; then drop the "
        "old one.",
        code="vector_collection_outdated",
        transient=False,
    )


def _collection_outdated(name: str) -> bool:
    """Whether collection ``name`` is of the BM25-function layout (False if it cannot be asked)."""
    try:
        return _bm25_function_output(_client().describe_collection(name))
    except Exception:  # noqa: BLE001 - the caller re-raises its own error
        return False


def _bm25_function_output(description: dict) -> bool:
    """Whether a collection's ``sparse`` field is filled by Milvus's BM25 function (the
    layout before apps/knowledge/bm25.py)."""
    if any("sparse" in (f.get("output_field_names") or []) for f in description.get("functions") or []):
        return True
    return any(f["name"] == "sparse" and f.get("is_function_output") for f in description["fields"])


def collection_exists() -> bool:
    """Whether MILVUS_COLLECTION holds anything yet: the collection itself (a server) or any
    tenant's collection under it (Lite)."""
    with _milvus_errors():
        return bool(_collection_names(_client()))


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


def _on_collection(default: Any, call: Any, *, tenant_key: str) -> Any:
    """``call(client, name)`` on the tenant's collection if it exists, else ``default``. The
    existence is cached; when the call fails the cache is dropped and, if the collection
    turns out to be gone (dropped by another process), the answer is ``default`` as if it
    had been asked."""
    name = collection_name(tenant_key=tenant_key)
    client = _client()
    if not _collection_known(client, name):
        return default
    try:
        with _milvus_errors():
            return call(client, name)
    except VectorStoreError:
        _forget(name)
        with _milvus_errors():
            if not client.has_collection(name):
                return default
        raise


def collection_drop() -> None:
    """Drop MILVUS_COLLECTION and, on Lite, every tenant collection under it: every tenant's
    vectors (evaluation collections)."""
    client = _client()
    with vector_write_lock(), _milvus_errors():
        for name in _collection_names(client):
            _drop(client, name)


def _drop(client, name: str) -> None:
    """Drop collection ``name`` and what this process and Redis keep about it."""
    try:
        client.drop_collection(name)
        _redis().delete(_unsealed_key(name))
    finally:
        _forget(name)


def collection_flush() -> None:
    """Seal whatever any collection under MILVUS_COLLECTION holds unsealed (see
    ``vectors_commit``, which does it for one tenant after each document)."""
    client = _client()
    with vector_write_lock(), _milvus_errors():
        for name in _collection_names(client):
            client.flush(name)
            _redis().delete(_unsealed_key(name))


def _unsealed_key(name: str) -> str:
    uri = hashlib.sha256(settings.MILVUS_URI.encode()).hexdigest()[:12]
    return f"zhida:milvus:unsealed:{uri}:{name}"


def _redis():
    from django_redis import get_redis_connection

    return get_redis_connection("default")


def vectors_commit(*, tenant_key: str) -> bool:
    """At the end of a document: seal the tenant's collection if MILVUS_LITE_SEAL_ROWS rows or
    more were written since it was last sealed (Lite only; a server seals and indexes on its
    own, and frequent flushes are discouraged there). Returns whether it sealed.

    Milvus Lite re-reads unsealed rows, and rebuilds their BM25 index, on every search:
    2,000 of them cost 64 ms per dense and 172 ms per BM25 search, against 3.7 ms each
    once sealed; a flush costs ~8 ms. (BM25 does not depend on segments: our weights carry
    the tenant's statistics, see bm25.py.) The count of rows waiting is kept in Redis per
    collection, changed only under the write lock."""
    if not is_lite():
        return False

    def flush(client, name: str) -> bool:
        with vector_write_lock():
            key = _unsealed_key(name)
            waiting = int(_redis().get(key) or 0)
            if waiting < max(1, settings.MILVUS_LITE_SEAL_ROWS):
                return False
            client.flush(name)
            _redis().decrby(key, waiting)
            return True

    return bool(_on_collection(False, flush, tenant_key=tenant_key))


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
    name = collection_ensure(dimension=dimension, tenant_key=tenant_key)
    client = _client()
    data = [
        {
            "id": r.id,
            "tenant_id": tenant_key,
            "document_id": r.document_id,
            "chunk_id": r.chunk_id,
            "vector": r.vector,
            "content": _content_fit(r.content),  # as stored in PostgreSQL: nothing analyses it here
            "sparse": r.sparse or NO_TERMS,
            "metadata": r.metadata,
        }
        for r in rows
    ]
    try:
        with vector_write_lock(), _milvus_errors():
            client.upsert(name, data)
            if is_lite():
                _redis().incrby(_unsealed_key(name), len(data))
    except VectorStoreError:
        _forget(name)  # the collection may be gone: ensure it again next time
        raise
    return len(data)


class VectorWriter:
    """Upserts a document's rows from a background thread, so that Milvus works while the
    caller embeds the next batch.

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


def _document_vector_ids(client, name: str, tenant_key: str, document_id: str) -> list[str]:
    rows = client.query(
        name,
        filter=_tenant_filter(tenant_key, f"document_id == {json.dumps(document_id)}"),
        output_fields=["id"],
    )
    return [str(r["id"]) for r in rows]


def vectors_delete(*, tenant_key: str, document_id: str, keep_ids: list[str] | None = None) -> None:
    """Delete a document's vectors in this tenant (optionally all but ``keep_ids``), whatever
    their ids: looks them up with a query, then deletes by primary key.

    The query scans the tenant's whole collection (Lite; growing with the tenant's
    knowledge base):
    when the ids are known, ``vectors_delete_ids`` costs a millisecond or two. This is for
    callers that cannot know them (old task messages, test clean-up)."""
    keep = set(keep_ids or [])

    def delete(client, name: str) -> None:
        with vector_write_lock(), _milvus_errors():
            doomed = [i for i in _document_vector_ids(client, name, tenant_key, document_id) if i not in keep]
            for start in range(0, len(doomed), 1000):
                client.delete(name, ids=doomed[start : start + 1000])

    _on_collection(None, delete, tenant_key=tenant_key)


def vectors_count(*, tenant_key: str, document_id: str | None = None) -> int:
    def count(client, name: str) -> int:
        extra = f"document_id == {json.dumps(document_id)}" if document_id else ""
        rows = client.query(name, filter=_tenant_filter(tenant_key, extra), output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    return _on_collection(0, count, tenant_key=tenant_key)


def vectors_ids_by_document(*, tenant_key: str) -> dict[str, set[str]]:
    """Every vector id of a tenant, grouped by document (iterated in batches)."""

    def ids(client, name: str) -> dict[str, set[str]]:
        result: dict[str, set[str]] = {}
        iterator = client.query_iterator(
            name, batch_size=1000, filter=_tenant_filter(tenant_key), output_fields=["id", "document_id"]
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

    return _on_collection({}, ids, tenant_key=tenant_key)


def vectors_delete_ids(*, tenant_key: str, ids: list[str]) -> None:
    """Delete vectors by primary key (1–2 ms whatever the collection holds; ids that are not
    there are no error). Callers pass ids of this tenant: read from it, or the deterministic
    ids of its documents' chunks."""
    if not ids:
        return

    def delete(client, name: str) -> None:
        with vector_write_lock(), _milvus_errors():
            for start in range(0, len(ids), 1000):
                client.delete(name, ids=ids[start : start + 1000])

    _on_collection(None, delete, tenant_key=tenant_key)


def vectors_tenant_drop(*, tenant_key: str) -> None:
    """Remove every vector of a tenant: its collection on Lite, its rows on a server
    (partition key). For a tenant that is being destroyed, never for a live one."""

    def drop(client, name: str) -> None:
        with vector_write_lock():
            if is_lite():
                _drop(client, name)
            else:
                client.delete(name, filter=_tenant_filter(tenant_key))

    _on_collection(None, drop, tenant_key=tenant_key)


def text_normalize(text: str) -> str:
    """What BM25 sees, for chunks and queries alike: Traditional Chinese folded to
    Simplified (OpenCC t2s), so either script finds the other's documents."""
    return _t2s().convert(text)


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
        return client.search(
            name,
            data=data,
            anns_field=anns_field,
            limit=limit,
            filter=_tenant_filter(tenant_key, extra),  # always, even in the tenant's own collection
            output_fields=["document_id"],
            search_params=params,
        )

    result = _on_collection([], search, tenant_key=tenant_key)  # no collection yet: nothing indexed, no hits
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
    *, tenant_key: str, weights: dict[int, float], limit: int, document_ids: list[str] | None = None
) -> list[VectorHit]:
    """Chunks by BM25: ``weights`` is the query's sparse vector (``bm25.query_vector``, read
    in the tenant's schema by the caller: this runs in a pool thread without a database
    connection). Scores are only comparable within one result list (Lite reports inner
    products negated): compare them within the list (search.fuse divides by the best one),
    never with a fixed threshold."""
    if not weights:
        return []
    try:
        return _search(
            tenant_key=tenant_key,
            data=[weights],
            anns_field="sparse",
            limit=limit,
            document_ids=document_ids,
            params={"metric_type": "IP"},
        )
    except VectorStoreError:
        # An outdated collection (the writes refuse it in collection_ensure) takes no sparse
        # query: say why instead of Milvus's message. Only asked after a failure.
        name = collection_name(tenant_key=tenant_key)
        if _collection_outdated(name):
            raise _outdated(name) from None
        raise
