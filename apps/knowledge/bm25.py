"""BM25 with each tenant's own statistics, computed by us and scored by Milvus as a sparse
inner product, so that it is the same on Milvus Lite and on a Milvus server.

Why not Milvus's BM25 function: Milvus Lite 3.x scores BM25 with each *segment's* own
statistics (N, avgdl, document frequencies; the TODO in its ``_search_sparse``), and our
Lite layout seals a segment after every document, so a segment is a run of recent uploads
whose IDF says little about the tenant's knowledge base: BM25 recall fell by up to five
points (vectorstore's module docstring). Here:

* document side, at ingestion: the chunk's terms (``analyze``: OpenCC t2s, jieba
  ``cut_for_search``, lower-cased, stop words and tokens without a letter, digit or CJK
  character dropped), each weighted ``tf·(k1+1) / (tf + k1·(1 − b + b·dl/avgdl))`` under a
  stable 32-bit id (CRC-32 of the UTF-8 term) and stored in the ``sparse`` field (IP
  metric). ``avgdl`` is the tenant's average chunk length at write time, this document's
  own chunks included (so a tenant's first document has one too);
* query side: each query term weighted by its IDF over the tenant's chunks,
  ``ln(1 + (N − df + 0.5)/(df + 0.5))`` (times its count in the query), so the inner
  product is the BM25 score. N and df are read from ``knowledge_bm25term`` in the tenant's
  schema in one statement (``query_vector``).

``knowledge_bm25term`` is kept by triggers on knowledge_documentchunk (migration 0002):
each chunk row carries its distinct term ids (``bm25_terms``) and its length
(``bm25_length``), and statement-level triggers with transition tables add or subtract
them on INSERT, UPDATE, DELETE and TRUNCATE. A trigger rather than code in the services:
chunks disappear through several paths (document delete, a new version retiring the old,
reprocessing, ``on_delete=CASCADE`` from documents, tests' flushes), and the statistics must
match the chunks that exist whatever path removed them, in the same transaction.

The document side's ``avgdl`` is frozen into the vectors when they are written; it drifts as
the tenant grows (the length normalisation of older chunks uses the average of their day).
The IDF, which decides most of the ranking, is always current.
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable

from django.db import connection
from psycopg.types.numeric import Int8

from apps.core.db import fetchall_prepared, qualified
from apps.knowledge.models import Bm25Term

K1 = 1.2  # Milvus's defaults for its BM25 function
B = 0.75
# Rows of knowledge_bm25term that are not terms (term ids are ≥ 0).
CHUNKS_ROW = -1  # count: the chunks that have been analysed (N)
LENGTH_ROW = -2  # count: their total length in terms
AVGDL_FALLBACK = 100.0  # only when neither the tenant nor the document has a term
# Milvus sparse indices are < 2**32 - 1; 2**32 - 2 stands for "no term" (vectorstore).
MAX_TERM_ID = 2**32 - 3
_MEANINGFUL = re.compile(r"[^\W_]")  # a letter or digit of any script (CJK included)


def term_id(term: str) -> int:
    """A term's sparse dimension: CRC-32 of its UTF-8 bytes (stable across processes and
    versions, unlike ``hash``), kept below Milvus's limit."""
    return min(zlib.crc32(term.encode("utf-8")), MAX_TERM_ID)


def _tokens(text: str) -> list[str]:
    """jieba's ``cut_for_search`` tokens of ``text`` as given, lower-cased; blanks and tokens
    without a letter, digit or CJK character dropped. Stop words are the caller's choice."""
    from apps.knowledge.vectorstore import jieba_tokenizer

    out = []
    for token in jieba_tokenizer().cut_for_search(text):
        token = token.strip().lower()
        if token and _MEANINGFUL.search(token):
            out.append(token)
    return out


@functools.lru_cache(maxsize=1024)
def query_tokens(text: str) -> tuple[str, ...]:
    """``_tokens`` of a query, cached: one search needs the folded query's tokens twice, for
    its BM25 weights (``query_vector``) and for highlighting (``search._query_terms``)."""
    return tuple(_tokens(text))


def _ids(tokens: Iterable[str]) -> tuple[int, ...]:
    stop = _stop_words()
    return tuple(term_id(token) for token in tokens if token not in stop)


@functools.lru_cache(maxsize=2048)
def analyze(text: str) -> tuple[tuple[int, ...], int]:
    """(term ids, one per token, in order; length) of a chunk, as BM25 sees it: OpenCC t2s,
    then ``_tokens``, stop words dropped. Cached: the index stage weights a chunk's terms and
    the swap-in stores them. A query goes through ``query_tokens`` instead (same analysis)."""
    from apps.knowledge.vectorstore import text_normalize

    ids = _ids(_tokens(text_normalize(text)))
    return ids, len(ids)


@functools.cache
def _stop_words() -> frozenset[str]:
    """Made once (``_ids`` runs for every chunk and every query; it used to turn the list
    into a tuple and hash it on each call to find the cached set)."""
    from apps.knowledge.vectorstore import BM25_STOP_WORDS

    return frozenset(BM25_STOP_WORDS)


def chunk_terms(text: str) -> tuple[list[int], int]:
    """What a DocumentChunk stores: its distinct term ids (sorted) and its length."""
    ids, length = analyze(text)
    return sorted(set(ids)), length


def document_vector(text: str, *, avgdl: float) -> dict[int, float]:
    """The chunk's sparse vector: BM25's term-frequency part for each of its terms."""
    ids, length = analyze(text)
    norm = K1 * (1.0 - B + B * length / max(avgdl, 1.0))
    return {term: tf * (K1 + 1.0) / (tf + norm) for term, tf in Counter(ids).items()}


def counts_lock() -> None:
    """Take, for the rest of the transaction, the lock the triggers take before they change
    the current tenant's counts (migration 0002). A service that locks rows (documents) and
    then writes chunks takes it first: otherwise it could hold a document row while waiting
    for this lock, held by a transaction that waits for that row (a new version retiring the
    old one while the old one is being deleted)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [counts_lock_key()])


def counts_lock_key() -> str:
    """The current tenant's lock key, as the triggers spell it (TG_TABLE_SCHEMA || ...)."""
    return f"{connection.schema_name}.knowledge_bm25term"


def _counts(terms: Iterable[int]) -> dict[int, int]:
    """{term: count} of these rows of the tenant's statistics; a prepared statement (every
    search runs it: apps.core.db), its ids as bigint whatever their size, so one statement."""
    sql = f"SELECT term, count FROM {qualified(Bm25Term._meta.db_table)} WHERE term = ANY(%s)"
    return dict(fetchall_prepared(sql, [[Int8(term) for term in terms]]))


def tenant_avgdl(*, texts: Iterable[str] = ()) -> float:
    """The current tenant's average chunk length, counting ``texts`` (the chunks about to
    be written) as well."""
    counts = _counts([CHUNKS_ROW, LENGTH_ROW])
    chunks, length = counts.get(CHUNKS_ROW, 0), counts.get(LENGTH_ROW, 0)
    for text in texts:
        chunks += 1
        length += analyze(text)[1]
    return length / chunks if chunks and length else AVGDL_FALLBACK


def idf(*, df: int, chunks: int) -> float:
    return math.log(1.0 + (chunks - df + 0.5) / (df + 0.5))


def query_vector(query: str) -> dict[int, float]:
    """The query's sparse vector for the current tenant: IDF × count per term (empty when no
    term is left, e.g. only stop words). One indexed lookup in the tenant's schema."""
    from apps.knowledge.vectorstore import text_normalize

    ids = _ids(query_tokens(text_normalize(query)))
    if not ids:
        return {}
    tf = Counter(ids)
    counts = _counts([CHUNKS_ROW, *tf])
    chunks = counts.get(CHUNKS_ROW, 0)
    # A term no chunk holds weighs as much as the rarest can: harmless (it matches nothing)
    # and never negative.
    return {term: n * idf(df=counts.get(term, 0), chunks=chunks) for term, n in tf.items()}
