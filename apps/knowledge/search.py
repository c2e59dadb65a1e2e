"""``chunk_search``: the one way to retrieve passages (API, admin hit-testing, chat).

Modes: ``dense`` (query embedding, cosine), ``bm25`` (over jieba terms with the tenant's own
statistics, ``bm25.py``, scored in Milvus as a sparse inner product) and
``hybrid`` (both, fused: see ``fuse``). Tenant isolation is enforced
here — the tenant's own collection (Lite) or partition key (server) *and* a tenant_id
filter in Milvus, then a join back to this
tenant's schema — never by the caller. Results are cached in Redis per tenant, keyed by a
knowledge version that every document change bumps."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django_tenants.utils import schema_context

from apps.core.db import fetchall_prepared, qualified
from apps.core.exceptions import ValidationFailed
from apps.knowledge.models import Document, DocumentChunk
from apps.knowledge.vectorstore import BM25_STOP_WORDS

MODES = ("dense", "bm25", "hybrid")
MAX_QUERY_CHARS = 2000
MAX_TOP_K = 50
# Per tenant in settings["search"]: score fusion, equal weights, 10 × top_k candidates from
# each list. Measured with manage.py eval_retrieval over the xquad-zh/en, cross-lingual and
# stackfaq sets, with and without distractors, and checked against a grid of score/RRF
# settings with bench/retrieval_tune.py: nothing did better across the sets (bench/README.md,
# "retrieval quality").
DEFAULT_SEARCH_SETTINGS = {"fusion": "score", "dense_weight": 1.0, "bm25_weight": 1.0, "candidates": 10, "rrf_k": 60}
FUSIONS = ("score", "rrf")
VERSION_KEY = "knowledge:version"
NEAR_DUPLICATE_JACCARD = 0.85


@dataclass
class SearchFilters:
    category: str | None = None
    tags: list[str] = field(default_factory=list)
    tags_mode: str = "any"  # any | all
    document_ids: list[str] = field(default_factory=list)
    language: str | None = None
    file_type: str | None = None

    @classmethod
    def from_dict(cls, data: dict | None) -> SearchFilters:
        if data is not None and not isinstance(data, dict):
            raise ValidationFailed("Filters are an object.", code="invalid_filter")
        data = dict(data or {})
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValidationFailed("Unknown filter.", code="invalid_filter", details={"filters": sorted(unknown)})
        if data.get("tags_mode", "any") not in ("any", "all"):
            raise ValidationFailed("tags_mode is 'any' or 'all'.", code="invalid_filter")
        for name in ("tags", "document_ids"):  # a string would be split into characters
            if not isinstance(data.get(name) or [], list | tuple):
                raise ValidationFailed(f"{name} is a list.", code="invalid_filter", details={"filters": [name]})
        data["document_ids"] = [str(d) for d in data.get("document_ids") or []]
        data["tags"] = [str(t) for t in data.get("tags") or []]
        return cls(**data)

    def is_empty(self) -> bool:
        return not (self.category or self.tags or self.document_ids or self.language or self.file_type)


@dataclass
class SearchHit:
    rank: int
    chunk_id: str
    document_id: str
    document_title: str
    original_name: str
    file_type: str
    page: int | None
    section: list[str]
    content: str
    highlighted: str
    score: float  # fused score (see fuse); only meaningful as an ordering
    dense_score: float | None  # cosine similarity with the query, when dense ran and found it
    dense_rank: int | None
    bm25_rank: int | None
    metadata: dict[str, Any]


@dataclass
class SearchResult:
    query: str
    mode: str
    top_k: int
    hits: list[SearchHit]
    timings: dict[str, float]
    cached: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def knowledge_version() -> int:
    """The current tenant's knowledge version (part of every search cache key)."""
    version = cache.get(VERSION_KEY)
    if version is None:
        version = int(time.time() * 1000)
        cache.add(VERSION_KEY, version, timeout=None)
        version = cache.get(VERSION_KEY, version)
    return int(version)


def knowledge_version_bump() -> None:
    """Invalidate every cached search of the current tenant (a document changed)."""
    try:
        cache.incr(VERSION_KEY)
    except ValueError:
        cache.set(VERSION_KEY, int(time.time() * 1000), timeout=None)


def search_settings(tenant: Any) -> dict:
    """DEFAULT_SEARCH_SETTINGS overridden by the tenant's ``settings["search"]`` (known keys
    only). Read from the tenant passed to chunk_search, not from ``connection.tenant``:
    under ``schema_context`` that is a stand-in without settings."""
    custom = (getattr(tenant, "settings", None) or {}).get("search", {})
    conf = {**DEFAULT_SEARCH_SETTINGS, **{k: v for k, v in custom.items() if k in DEFAULT_SEARCH_SETTINGS}}
    if conf["fusion"] not in FUSIONS:
        conf["fusion"] = DEFAULT_SEARCH_SETTINGS["fusion"]
    return conf


def _validate(query: str, top_k: int, mode: str) -> str:
    query = (query or "").strip()
    if not query:
        raise ValidationFailed("The query is empty.", code="empty_query")
    if len(query) > MAX_QUERY_CHARS:
        raise ValidationFailed(
            f"The query is longer than {MAX_QUERY_CHARS} characters.",
            code="query_too_long",
            details={"max_chars": MAX_QUERY_CHARS},
        )
    if mode not in MODES:
        raise ValidationFailed("Unknown search mode.", code="invalid_mode", details={"modes": list(MODES)})
    try:
        top_k_valid = 1 <= int(top_k) <= MAX_TOP_K
    except (TypeError, ValueError):
        top_k_valid = False
    if not top_k_valid:
        raise ValidationFailed(f"top_k is between 1 and {MAX_TOP_K}.", code="invalid_top_k")
    return query


def _allowed_documents(filters: SearchFilters) -> list[str] | None:
    """None: no document filter. Otherwise the ids of indexed documents that match."""
    if filters.is_empty():
        return None
    qs = Document.objects.filter(status=Document.Status.INDEXED)
    if filters.category:
        qs = qs.filter(category=filters.category)
    if filters.tags:
        qs = (
            qs.filter(tags__contains=filters.tags)
            if filters.tags_mode == "all"
            else qs.filter(tags__overlap=filters.tags)
        )
    if filters.document_ids:
        qs = qs.filter(pk__in=filters.document_ids)
    if filters.language:
        qs = qs.filter(language=filters.language)
    if filters.file_type:
        qs = qs.filter(file_type=filters.file_type)
    return [str(pk) for pk in qs.values_list("pk", flat=True)]


STOPWORDS = frozenset([*BM25_STOP_WORDS, *["多少", "几", "哪", "哪些", "可以", "能", "要", "请", "问"]])


def _query_terms(query: str) -> list[str]:
    """The query's meaningful terms (jieba, both scripts), longest first, for highlighting.
    The folded variant's tokens are the ones its BM25 weights were made from (cached)."""
    from apps.knowledge.bm25 import query_tokens
    from apps.knowledge.vectorstore import text_normalize

    terms = {
        token
        for variant in {query, text_normalize(query)}
        for token in query_tokens(variant)
        if token not in STOPWORDS and len(token) >= 2
    }
    return sorted(terms, key=len, reverse=True)


def highlight(text: str, terms: list[str]) -> str:
    """HTML-escaped text with the query's terms wrapped in <mark> (latin terms on word
    boundaries, so "to" does not light up "restore"). Terms are looked for in the raw text,
    so never inside an entity that escaping made ("amp" must not mark "&amp;"), folded to
    Simplified when that keeps its length, so a query in either script marks the other.

    Matches as ``re`` would with the terms as one case-insensitive alternation, longest
    first (leftmost match; at one position the first term that fits; the scan resumes after
    it), but found with ``str.find``: compiling that alternation cost about 0.5 ms per
    search, as every query makes a pattern of its own (bench/README.md, search latency)."""
    from apps.knowledge.vectorstore import text_normalize

    if not terms:
        return html.escape(text)
    haystack = text
    if not all(t.isascii() for t in terms):  # folding only matters to CJK terms
        folded = text_normalize(text)
        haystack = folded if len(folded) == len(text) else text
    lowered = haystack.lower()
    if len(lowered) != len(haystack):  # İ lower-cases to two characters: keep the first, as re does
        lowered = "".join(char.lower()[:1] for char in haystack)
    spans = _term_spans(lowered, terms)
    out, last = [], 0
    for start, end in spans:
        out.append(html.escape(text[last:start]))
        out.append(f"<mark>{html.escape(text[start:end])}</mark>")
        last = end
    out.append(html.escape(text[last:]))
    return "".join(out)


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"  # re's \w on str


def _term_spans(lowered: str, terms: list[str]) -> list[tuple[int, int]]:
    """The (start, end) of each match in ``lowered``, left to right, without overlaps."""
    found: dict[int, int] = {}  # start → end of the first term (in ``terms`` order) there
    size = len(lowered)
    for term in terms:
        needle = term.lower()
        if not needle:
            continue
        bounded = term.isascii()
        at = lowered.find(needle)
        while at != -1:
            end = at + len(needle)
            if at not in found and (
                not bounded
                or (
                    (at == 0 or _is_word(lowered[at - 1]) != _is_word(needle[0]))
                    and (end == size or _is_word(lowered[end]) != _is_word(needle[-1]))
                )
            ):
                found[at] = end
            at = lowered.find(needle, at + 1)
    spans, last = [], 0
    for start in sorted(found):
        if start >= last:
            spans.append((start, found[start]))
            last = found[start]
    return spans


class _Passage:
    """A hit's text as the near-duplicate check sees it: lower-cased, blanks removed; its
    5-character shingles are made when a comparison first needs them."""

    __slots__ = ("content_hash", "norm", "_shingles")

    def __init__(self, content: str, content_hash: str) -> None:
        self.content_hash = content_hash
        self.norm = _BLANKS.sub("", content.lower())
        self._shingles: set[str] | None = None

    @property
    def shingles(self) -> set[str]:
        if self._shingles is None:
            norm = self.norm
            self._shingles = {norm[i : i + 5] for i in range(max(1, len(norm) - 4))}
        return self._shingles


_BLANKS = re.compile(r"\s+")


def _near_duplicate(a: _Passage, b: _Passage) -> bool:
    """The same text, or Jaccard similarity of the shingle sets ≥ NEAR_DUPLICATE_JACCARD
    between passages whose normalised lengths are within that ratio of each other.

    The Jaccard similarity can be no more than the smaller set's size over the larger's, and
    a passage has about as many distinct shingles as characters, so passages of clearly
    different length are told apart from their lengths alone, before any shingle is made
    (most pairs: this runs up to top_k² / 2 times a search, and making the shingles was
    most of its cost). Only highly repetitive text (a table of identical cells) has far
    fewer shingles than characters; two of those of different lengths stay two passages."""
    if a.content_hash == b.content_hash:
        return True
    if not a.norm or not b.norm:
        return False
    if min(len(a.norm), len(b.norm)) < NEAR_DUPLICATE_JACCARD * max(len(a.norm), len(b.norm)):
        return False
    sa, sb = a.shingles, b.shingles
    if min(len(sa), len(sb)) < NEAR_DUPLICATE_JACCARD * max(len(sa), len(sb)):
        return False
    common = len(sa & sb)
    return common / (len(sa) + len(sb) - common) >= NEAR_DUPLICATE_JACCARD


def _cache_key(query: str, top_k: int, filters: SearchFilters, mode: str, conf: dict) -> str:
    payload = json.dumps(
        {"q": query, "k": top_k, "f": asdict(filters), "m": mode, "v": knowledge_version(), "s": conf},
        sort_keys=True,
        ensure_ascii=False,
    )
    return "search:" + hashlib.sha256(payload.encode()).hexdigest()


def chunk_search(
    *,
    tenant: Any,
    query: str,
    top_k: int = 5,
    filters: SearchFilters | dict | None = None,
    mode: str = "hybrid",
    use_cache: bool = True,
    user_id: Any = None,
    query_vector: list[float] | None = None,
) -> SearchResult:
    """Search the tenant's indexed chunks. See the module docstring. ``query_vector``: the
    query's embedding (``query_embedding(query)``) when the caller has computed it
    already (chat reuses it to compose the answer); it is not part of the cache key."""
    if connection.schema_name != tenant.schema_name:
        with schema_context(tenant.schema_name):
            return chunk_search(
                tenant=tenant,
                query=query,
                top_k=top_k,
                filters=filters,
                mode=mode,
                use_cache=use_cache,
                user_id=user_id,
                query_vector=query_vector,
            )
    started = time.perf_counter()
    query = _validate(query, top_k, mode)
    filters = filters if isinstance(filters, SearchFilters) else SearchFilters.from_dict(filters)
    conf = search_settings(tenant)
    key = _cache_key(query, top_k, filters, mode, conf) if use_cache else None
    if key:
        cached = cache.get(key)
        if cached is not None:
            result = SearchResult(**{**cached, "hits": [SearchHit(**h) for h in cached["hits"]]})
            result.cached = True
            result.timings = {"total_ms": round((time.perf_counter() - started) * 1000, 2)}
            _record_usage(mode=mode, hits=len(result.hits), cached=True, user_id=user_id)
            return result

    result = _search_uncached(
        query=query, top_k=top_k, filters=filters, mode=mode, conf=conf, started=started, query_vector=query_vector
    )
    if key:
        cache.set(key, result.as_dict(), timeout=settings.SEARCH_CACHE_TTL)
    _record_usage(mode=mode, hits=len(result.hits), cached=False, user_id=user_id)
    return result


def _record_usage(*, mode: str, hits: int, cached: bool, user_id: Any) -> None:
    from apps.billing.services import usage_record

    usage_record(
        usage_type="vector_search",
        quantity=1,
        unit="count",
        user_id=user_id,
        metadata={"mode": mode, "hits": hits, "cached": cached},
    )


def search_candidates(
    *,
    query: str,
    mode: str,
    limit: int,
    document_ids: list[str] | None = None,
    query_vector: list[float] | None = None,
) -> tuple[list[Any], list[Any], dict[str, float]]:
    """The raw candidate lists of the current tenant, best first: (dense hits, BM25 hits,
    timings). A mode that does not use one of the lists leaves it empty.

    Hybrid sends the BM25 search from a pool thread first, then embeds the query and runs
    the dense search here, so BM25 overlaps both (on a Milvus server the two searches run in
    parallel; an OpenAI-compatible embedder's round trip hides BM25 entirely). Only the
    Milvus RPC runs in the thread: the tenant key and the query's BM25 weights (IDF from
    the tenant's statistics, one SQL statement) are resolved here, and nothing there
    touches the database (a pool thread would open a connection of its own, outside this
    tenant's schema).

    Timings: ``embed_ms`` the query embedding; ``sparse_ms`` the query's BM25 weights, its
    sparse embedding (jieba, and the IDF of its terms from the tenant's statistics: one SQL
    statement), the work Milvus's BM25 function did inside Milvus before BM25 became ours
    (``bm25``); ``dense_ms`` and ``bm25_ms`` each search's own wall time; ``milvus_ms`` how
    long Milvus kept this search waiting beyond the embedding (sequential: dense + BM25;
    hybrid: max(embed + dense, BM25) − embed)."""
    from apps.knowledge.bm25 import query_vector as bm25_query_vector
    from apps.knowledge.services import tenant_key
    from apps.knowledge.vectorstore import vectors_search_bm25, vectors_search_dense

    timings = dict(_NO_TIMINGS)
    key = tenant_key()
    dense_hits, bm25_hits = [], []
    bm25_args = {"tenant_key": key, "limit": limit, "document_ids": document_ids}
    if mode in ("bm25", "hybrid"):
        t = time.perf_counter()
        bm25_args["weights"] = bm25_query_vector(query)
        timings["sparse_ms"] = (time.perf_counter() - t) * 1000
    started = time.perf_counter()
    bm25_future: Future | None = None
    if mode == "hybrid":
        bm25_future = _milvus_pool().submit(_timed, vectors_search_bm25, **bm25_args)
    try:
        if mode in ("dense", "hybrid"):
            t = time.perf_counter()
            vector = query_vector if query_vector is not None else query_embedding(query)
            timings["embed_ms"] = (time.perf_counter() - t) * 1000
            dense_hits, timings["dense_ms"] = _timed(
                vectors_search_dense, tenant_key=key, vector=vector, limit=limit, document_ids=document_ids
            )
        if bm25_future is not None:
            bm25_hits, timings["bm25_ms"] = bm25_future.result()
        elif mode == "bm25":
            bm25_hits, timings["bm25_ms"] = _timed(vectors_search_bm25, **bm25_args)
    finally:
        if bm25_future is not None:
            bm25_future.cancel()  # only if it never started (the embedding failed first)
    timings["milvus_ms"] = max(0.0, (time.perf_counter() - started) * 1000 - timings["embed_ms"])
    return dense_hits, bm25_hits, timings


_NO_TIMINGS = {"embed_ms": 0.0, "sparse_ms": 0.0, "milvus_ms": 0.0, "dense_ms": 0.0, "bm25_ms": 0.0}


def query_embedding(query: str) -> list[float]:
    """The query's dense vector, as ``chunk_search`` makes it (Traditional Chinese folded
    first); a caller that needs it too (chat) makes it here and passes it as
    ``query_vector``, so the question is embedded once."""
    from apps.knowledge.pipeline.embed import get_embedder
    from apps.knowledge.vectorstore import text_normalize

    return get_embedder().embed([text_normalize(query)])[0]


def _timed(function: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    result = function(**kwargs)
    return result, (time.perf_counter() - t) * 1000


_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _milvus_pool() -> ThreadPoolExecutor:
    """The threads that send hybrid's BM25 searches (SEARCH_THREADS per process; a search
    holds one for a single RPC, at most MILVUS_TIMEOUT). Made on first use and again after
    a fork: a Celery prefork child inherits the object but not its threads."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=settings.SEARCH_THREADS, thread_name_prefix="search-milvus")
            _pool_pid = os.getpid()
        return _pool


def candidate_limit(top_k: int, conf: dict) -> int:
    """How deep each list is read: ``candidates`` × top_k, at least 20."""
    return max(top_k * int(conf["candidates"]), 20)


def fuse(dense_hits: list[Any], bm25_hits: list[Any], conf: dict) -> list[tuple[str, float]]:
    """(chunk id, fused score), best first; ties go to the better dense rank, and a single
    list (dense or bm25 mode) keeps its own order.

    ``score`` (default): each list's scores divided by that list's best score, then
    ``dense_weight × dense + bm25_weight × bm25`` (a chunk missing from a list gets 0 there).
    Unlike ranks, scores keep how far ahead a list's first hits are: where BM25's scores are
    flat (a Chinese question over English passages matches only a stray number, equally in
    many of them) it adds about the same to every candidate and dense decides; where BM25
    has a clear winner, it wins.
    ``rrf``: weighted reciprocal-rank fusion, ``weight / (rrf_k + rank)`` per list."""
    dense = _list_scores(dense_hits, is_bm25=False, conf=conf)
    bm25 = _list_scores(bm25_hits, is_bm25=True, conf=conf)
    if not dense or not bm25:
        # One list (dense or bm25 mode): Milvus returns it best first and a list's score
        # falls with its own score or rank, so it is in order already (ties as it came, as
        # the sort below would keep them).
        return dense or bm25
    fused = dict(dense)
    for cid, score in bm25:
        fused[cid] = fused.get(cid, 0.0) + score
    dense_rank = {cid: i for i, (cid, _) in enumerate(dense)}
    order = sorted(fused, key=lambda cid: (-fused[cid], dense_rank.get(cid, 10**9)))
    return [(cid, fused[cid]) for cid in order]


def _list_scores(hits: list[Any], *, is_bm25: bool, conf: dict) -> list[tuple[str, float]]:
    """One list's share of the fused score, per hit, in the list's order (see ``fuse``)."""
    weight = float(conf["bm25_weight" if is_bm25 else "dense_weight"])
    if conf["fusion"] == "rrf":
        k = float(conf["rrf_k"])
        return [(hit.id, weight / (k + rank)) for rank, hit in enumerate(hits, start=1)]
    # Cosine similarity, and BM25 as a magnitude (Milvus Lite reports it negated).
    scores = [max(abs(h.score) if is_bm25 else h.score, 0.0) for h in hits]
    best = max(scores, default=0.0)
    return [(hit.id, weight * score / best if best > 0.0 else 0.0) for hit, score in zip(hits, scores, strict=True)]


def _search_uncached(
    *,
    query: str,
    top_k: int,
    filters: SearchFilters,
    mode: str,
    conf: dict,
    started: float,
    query_vector: list[float] | None = None,
) -> SearchResult:
    allowed = _allowed_documents(filters)
    if allowed is not None and not allowed:
        timings = dict(_NO_TIMINGS)
        return SearchResult(query=query, mode=mode, top_k=top_k, hits=[], timings=_finish(timings, started))
    dense_hits, bm25_hits, timings = search_candidates(
        query=query, mode=mode, limit=candidate_limit(top_k, conf), document_ids=allowed, query_vector=query_vector
    )
    hits = hits_rank(query=query, top_k=top_k, dense_hits=dense_hits, bm25_hits=bm25_hits, conf=conf)
    return SearchResult(query=query, mode=mode, top_k=top_k, hits=hits, timings=_finish(timings, started))


def hits_rank(*, query: str, top_k: int, dense_hits: list[Any], bm25_hits: list[Any], conf: dict) -> list[SearchHit]:
    """The top_k hits for these candidate lists (either may be empty): fused, joined back to
    this tenant's indexed chunks, near-duplicates collapsed, highlighted. ``chunk_search``
    after Milvus; the evaluation harness also calls it to rank one fetch in every mode."""
    ranked = fuse(dense_hits, bm25_hits, conf)
    fused = dict(ranked)
    order = [cid for cid, _ in ranked]
    dense_rank = {h.id: i + 1 for i, h in enumerate(dense_hits)}
    dense_score = {h.id: h.score for h in dense_hits}
    bm25_rank = {h.id: i + 1 for i, h in enumerate(bm25_hits)}

    terms = _query_terms(query)
    hits: list[SearchHit] = []
    kept: list[_Passage] = []
    for chunk_id, chunk in _chunks_in_order(order, first=2 * top_k):
        passage = _Passage(chunk.content, chunk.content_hash)
        if any(_near_duplicate(passage, other) for other in kept):
            continue
        kept.append(passage)
        meta = chunk.metadata
        hits.append(
            SearchHit(
                rank=len(hits) + 1,
                chunk_id=chunk_id,
                document_id=chunk.document_id,
                document_title=chunk.title or chunk.original_name,
                original_name=chunk.original_name,
                file_type=chunk.file_type,
                page=meta.get("page") or meta.get("slide"),
                section=list(meta.get("heading_path") or []),
                content=chunk.content,
                highlighted=highlight(chunk.content, terms),
                score=round(fused[chunk_id], 6),
                dense_score=round(dense_score[chunk_id], 4) if chunk_id in dense_score else None,
                dense_rank=dense_rank.get(chunk_id),
                bm25_rank=bm25_rank.get(chunk_id),
                metadata=meta,
            )
        )
        if len(hits) >= top_k:
            break
    return hits


@dataclass(frozen=True)
class _ChunkRow:
    """What ranking needs of a chunk and its document: read as plain columns."""

    content: str
    content_hash: str
    metadata: dict
    document_id: str
    title: str
    original_name: str
    file_type: str


def _readback_sql() -> str:
    """The chunks first, by primary key, then their documents. MATERIALIZED keeps
    PostgreSQL to that order: without statistics (a new tenant, before autovacuum's first
    ANALYZE) it planned the join the other way round, every indexed document of the tenant
    and then its chunks, 0.6 ms at 50 documents and growing with them (bench/README.md)."""
    chunk, document = qualified(DocumentChunk._meta.db_table), qualified(Document._meta.db_table)
    return (
        f"WITH c AS MATERIALIZED (SELECT id, content, content_hash, metadata, document_id FROM {chunk} "
        "WHERE id = ANY(%s::uuid[])) "
        "SELECT c.id::text, c.content, c.content_hash, c.metadata, c.document_id::text, d.title, "
        f"d.original_name, d.file_type FROM c JOIN {document} d ON d.id = c.document_id WHERE d.status = %s"
    )


def _chunks_in_order(order: list[str], *, first: int) -> Iterator[tuple[str, _ChunkRow]]:
    """The chunks of ``order`` (ids, best first) that belong to this tenant's indexed
    documents, in that order: a superseded version's vectors may linger for a moment after
    its replacement went live. Read from PostgreSQL in slices (``first`` ids, then the rest),
    because the caller usually stops after top_k: the lists hold candidates × top_k ids.

    One SQL statement of our own per slice, prepared, on the tenant's schema named in it
    (``apps.core.db``: planning its join was half of its time). Building the same query
    through the ORM (select_related, only, the model's ordering) and instantiating
    2 × top_k chunks and documents took about as long as the statement itself, on every
    search (bench/README.md, search latency)."""
    sql = _readback_sql()
    start, size = 0, max(first, 1)
    while start < len(order):
        ids = order[start : start + size]
        found = {
            row[0]: _ChunkRow(
                content=row[1],
                content_hash=row[2],
                metadata=(json.loads(row[3]) if isinstance(row[3], str) else row[3]) or {},
                document_id=row[4],
                title=row[5],
                original_name=row[6],
                file_type=row[7],
            )
            for row in fetchall_prepared(sql, [ids, str(Document.Status.INDEXED)])
        }
        for chunk_id in ids:
            if chunk_id in found:
                yield chunk_id, found[chunk_id]
        start, size = start + size, len(order)


def _finish(timings: dict[str, float], started: float) -> dict[str, float]:
    total = (time.perf_counter() - started) * 1000
    timings["total_ms"] = total
    timings["overhead_ms"] = max(0.0, total - timings["embed_ms"] - timings["sparse_ms"] - timings["milvus_ms"])
    return {k: round(v, 2) for k, v in timings.items()}
