"""Retrieval quality: load a question-answering corpus into a throw-away tenant through the
real ingestion pipeline, ask its questions through ``chunk_search`` and score the rankings.

Driven by ``manage.py eval_retrieval`` (figures and commands: bench/README.md, "Retrieval
quality"). Corpora are the normalised sets of shared/eval: ``corpus.jsonl`` lines
``{"id", "title", "text"}`` and ``queries.jsonl`` lines ``{"id", "question", "gold_ids",
"answers"}``. Every passage becomes one small .txt document (title = passage title).

Passage ids are only unique within one corpus (xquad-en and xquad-zh use the same ids for
a paragraph and its translation), so a passage is known by its key ``<corpus>/<id>``, and
a question's gold ids always refer to the evaluated corpus, never to a distractor corpus."""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django_tenants.utils import schema_context

Progress = Callable[[int, int], None]
SCHEMA_PREFIX = "eval_"
TOP_K = 10
CUTOFFS = (1, 5, 10)


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    gold_ids: tuple[str, ...]


def _jsonl(path: Path) -> Iterable[dict]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc})") from exc


def corpus_read(directory: Path) -> list[Passage]:
    passages = [
        Passage(id=str(r["id"]), title=str(r.get("title") or ""), text=str(r["text"]))
        for r in _jsonl(directory / "corpus.jsonl")
    ]
    ids = [p.id for p in passages]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{directory}/corpus.jsonl: passage ids are not unique")
    return passages


def questions_read(path: Path) -> list[Question]:
    return [
        Question(id=str(r["id"]), question=str(r["question"]), gold_ids=tuple(str(g) for g in r["gold_ids"]))
        for r in _jsonl(path)
    ]


def questions_sample(questions: list[Question], limit: int | None) -> list[Question]:
    """``limit`` questions spread evenly over the file (the sets are ordered by article, so
    the first N would all be about the same few topics)."""
    if not limit or limit >= len(questions):
        return questions
    step = len(questions) / limit
    return [questions[int(i * step)] for i in range(limit)]


# --------------------------------------------------------------------------------------
# The throw-away tenant
# --------------------------------------------------------------------------------------
def _run_lock_key(schema: str) -> int:
    return int.from_bytes(hashlib.sha256(f"zhida-eval:{schema}".encode()).digest()[:8], "big", signed=True)


def eval_tenant_create(*, search: dict | None = None) -> Any:
    """A new tenant ``eval_<random>`` (through tenant_create, like any other tenant);
    ``search`` becomes its ``settings["search"]``. This database session holds an advisory
    lock on it until it ends, so ``eval_leftovers`` never offers a running evaluation's
    tenant for removal."""
    from django_tenants.utils import schema_exists

    from apps.tenancy.services import tenant_create

    while True:
        schema = f"{SCHEMA_PREFIX}{secrets.token_hex(5)}"
        if not schema_exists(schema):
            break
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [_run_lock_key(schema)])
    return tenant_create(
        name=f"Retrieval eval {schema}", schema_name=schema, settings_={"search": search} if search else {}
    )


def eval_tenant_reuse(*, schema: str, search: dict | None = None) -> Any:
    """A tenant kept by an earlier run (``--keep``); ``search``, when given, replaces its
    ``settings["search"]``. Runs that only ask may share it (a shared advisory lock: several
    --reuse runs at once, each asking other question sets), while ``eval_leftovers``, which
    needs the lock alone, never offers it for removal while one of them runs."""
    from apps.tenancy.models import Tenant

    tenant = Tenant.objects.filter(schema_name=schema, schema_name__startswith=SCHEMA_PREFIX).first()
    if tenant is None:
        raise ValueError(f"no evaluation tenant {schema}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock_shared(%s)", [_run_lock_key(schema)])
        if not cursor.fetchone()[0]:
            raise ValueError(f"{schema} is being loaded or removed")
    if search is not None:
        tenant.settings = {**(tenant.settings or {}), "search": search}
        tenant.save(update_fields=["settings"])
    return tenant


def eval_tenant_destroy(tenant: Any) -> None:
    """Remove everything the evaluation wrote for ``tenant``: its vectors (its collection on Lite),
    stored files, cache keys, schema (DROP SCHEMA ... CASCADE) and public rows (tenant,
    domain, subscription, usage records, platform audit rows)."""
    from apps.audit.models import AuditLog
    from apps.billing.models import UsageRecord
    from apps.knowledge.models import Document
    from apps.knowledge.vectorstore import VectorStoreError, vectors_tenant_drop
    from apps.tenancy.models import Tenant

    schema = tenant.schema_name
    vector_error = None
    with schema_context(schema):
        files = [name for name in Document.objects.values_list("file", flat=True) if name]
        try:
            vectors_tenant_drop(tenant_key=str(tenant.pk))
        except VectorStoreError as exc:  # clean up the rest, then say so
            vector_error = exc
        cache.delete_pattern("*")  # keys are prefixed with the schema (django_tenants.cache.make_key)
    for name in files:
        default_storage.delete(name)
    _storage_folder_remove(schema)
    connection.set_schema_to_public()
    AuditLog.objects.filter(resource_type="tenant", resource_id=str(tenant.pk)).delete()
    UsageRecord.objects.filter(tenant_id=tenant.pk).delete()
    for row in Tenant.objects.filter(pk=tenant.pk):
        row.delete(force_drop=True)  # DROP SCHEMA ... CASCADE, then the tenant, domain and subscription rows
    with connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        cursor.execute("SELECT pg_advisory_unlock(%s)", [_run_lock_key(schema)])  # see eval_tenant_create
    if vector_error is not None:
        raise vector_error


def _storage_folder_remove(schema: str) -> None:
    """Empty folders left by the deleted files (local storage only)."""
    try:
        root = Path(default_storage.path(schema))
    except NotImplementedError:
        return
    if not root.is_dir():
        return
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(root.iterdir()):
        root.rmdir()


def eval_leftovers() -> list[Any]:
    """Tenants of earlier runs that were kept (--keep) or killed before cleaning up; not
    those of evaluations still running (their session holds the tenant's advisory lock).
    The locks taken here are held until this session ends."""
    from apps.tenancy.models import Tenant

    found = []
    with connection.cursor() as cursor:
        for tenant in Tenant.objects.filter(schema_name__startswith=SCHEMA_PREFIX).order_by("created_at"):
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [_run_lock_key(tenant.schema_name)])
            if cursor.fetchone()[0]:
                found.append(tenant)
    return found


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    documents: dict[str, list[str]] = field(default_factory=dict)  # document id → passage keys
    failed: list[tuple[str, str]] = field(default_factory=list)  # (passage key, error)
    seconds: float = 0.0


def corpus_load(*, label: str, passages: list[Passage], report: LoadReport, progress: Progress | None = None) -> None:
    """Upload and process one document per passage in the current tenant schema
    (document_upload, then document_process: Celery runs eagerly, in this process)."""
    from apps.knowledge.models import Document
    from apps.knowledge.services import document_process, document_upload
    from config.celery_app import app

    started = time.perf_counter()
    saved = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    try:
        for done, passage in enumerate(passages, start=1):
            key = f"{label}/{passage.id}"
            result = document_upload(
                actor=None,
                file=ContentFile(passage.text.encode("utf-8"), name=f"{label}__{passage.id}.txt"),
                original_name=f"{label}__{passage.id}.txt",
                title=passage.title or passage.id,
            )
            document = result.document
            if document.status == Document.Status.PROCESSING:  # the eager task did not get to it
                document_process(document_id=document.pk)
            document.refresh_from_db()
            if document.status == Document.Status.INDEXED:
                report.documents.setdefault(str(document.pk), []).append(key)
            else:
                report.failed.append((key, f"{document.status}: {document.error_code} {document.error_message}"))
            if progress:
                progress(done, len(passages))
    finally:
        app.conf.task_always_eager, app.conf.task_eager_propagates = saved
    report.seconds += time.perf_counter() - started


def corpus_loaded(*, labels: list[str], report: LoadReport) -> None:
    """``report.documents`` of a tenant loaded by an earlier run: its indexed documents named
    ``<label>__<passage id>.txt`` (as ``corpus_load`` names them)."""
    from apps.knowledge.models import Document

    rows = Document.objects.filter(status=Document.Status.INDEXED).values_list("pk", "original_name")
    for pk, name in rows:
        label, sep, rest = name.partition("__")
        if sep and label in labels and rest.endswith(".txt"):
            report.documents.setdefault(str(pk), []).append(f"{label}/{rest.removesuffix('.txt')}")


# --------------------------------------------------------------------------------------
# Asking and scoring
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    question_id: str
    ranked: tuple[tuple[str, ...], ...]  # per hit, in order: the passage keys of its document
    gold: tuple[str, ...]  # passage keys
    ms: float


def questions_ask(
    *,
    tenant: Any,
    questions: list[Question],
    dataset: str,
    mode: str,
    documents: dict[str, list[str]],
    progress: Progress | None = None,
) -> list[Outcome]:
    """Every question through ``chunk_search`` (top 10, cache off), timed one by one. The
    first question is asked once before timing, so model loading is not counted."""
    from apps.knowledge.search import chunk_search

    if questions:
        chunk_search(tenant=tenant, query=questions[0].question, top_k=TOP_K, mode=mode, use_cache=False)
    outcomes = []
    for done, question in enumerate(questions, start=1):
        started = time.perf_counter()
        result = chunk_search(tenant=tenant, query=question.question, top_k=TOP_K, mode=mode, use_cache=False)
        ms = (time.perf_counter() - started) * 1000
        ranked = tuple(tuple(documents.get(hit.document_id, ["?"])) for hit in result.hits)
        gold = tuple(f"{dataset}/{g}" for g in question.gold_ids)
        outcomes.append(Outcome(question_id=question.id, ranked=ranked, gold=gold, ms=ms))
        if progress:
            progress(done, len(questions))
    return outcomes


def questions_ask_shared(
    *,
    tenant: Any,
    questions: list[Question],
    dataset: str,
    modes: list[str],
    documents: dict[str, list[str]],
    depth: int,
    latency_questions: int,
    progress: Progress | None = None,
) -> tuple[dict[str, list[Outcome]], dict[str, list[float]], list[dict]]:
    """Like ``questions_ask`` in every mode, with Milvus asked once per question: both
    candidate lists are fetched ``depth`` deep (``search_candidates``, as hybrid does), and
    each mode ranks its own prefix of them (``candidate_limit`` deep, what chunk_search would
    have fetched) through ``search.hits_rank``, the code chunk_search runs after Milvus.
    Latency is timed on real ``chunk_search`` calls, ``latency_questions`` questions spread
    over the set per mode (the first one untimed). Returns (outcomes per mode, latencies per
    mode, candidate rows as ``candidates_collect`` makes them)."""
    from apps.knowledge.search import candidate_limit, chunk_search, hits_rank, search_candidates, search_settings

    conf = search_settings(tenant)
    limit = candidate_limit(TOP_K, conf)
    if limit > depth:
        raise ValueError(f"candidate depth {depth} is below what chunk_search fetches ({limit})")
    outcomes: dict[str, list[Outcome]] = {mode: [] for mode in modes}
    rows = []
    for done, question in enumerate(questions, start=1):
        query = question.question.strip()
        dense, bm25, _ = search_candidates(query=query, mode="hybrid", limit=depth)
        gold = tuple(f"{dataset}/{g}" for g in question.gold_ids)
        for mode in modes:
            hits = hits_rank(
                query=query,
                top_k=TOP_K,
                dense_hits=dense[:limit] if mode in ("dense", "hybrid") else [],
                bm25_hits=bm25[:limit] if mode in ("bm25", "hybrid") else [],
                conf=conf,
            )
            ranked = tuple(tuple(documents.get(hit.document_id, ["?"])) for hit in hits)
            outcomes[mode].append(Outcome(question_id=question.id, ranked=ranked, gold=gold, ms=0.0))
        rows.append(
            {
                "id": question.id,
                "gold": list(gold),
                "dense": [[h.id, documents.get(h.document_id, ["?"])[0], h.score] for h in dense],
                "bm25": [[h.id, documents.get(h.document_id, ["?"])[0], h.score] for h in bm25],
            }
        )
        if progress:
            progress(done, len(questions))
    timed = questions_sample(questions, latency_questions)
    latencies: dict[str, list[float]] = {mode: [] for mode in modes}
    for mode in modes:
        chunk_search(tenant=tenant, query=timed[0].question, top_k=TOP_K, mode=mode, use_cache=False)
    for question in timed:  # modes interleaved, so load on the machine hits them alike
        for mode in modes:
            started = time.perf_counter()
            chunk_search(tenant=tenant, query=question.question, top_k=TOP_K, mode=mode, use_cache=False)
            latencies[mode].append((time.perf_counter() - started) * 1000)
    return outcomes, latencies, rows


@dataclass(frozen=True)
class Scores:
    mode: str
    questions: int
    recall: dict[int, float]  # cutoff → mean recall
    mrr: float  # MRR@10
    p50_ms: float
    p95_ms: float
    top1_distractor: float  # share of questions whose first hit is from another corpus
    timed: int = 0  # questions timed (latency), when not all of them were

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "questions": self.questions,
            **{f"recall@{k}": round(v, 4) for k, v in self.recall.items()},
            "mrr@10": round(self.mrr, 4),
            "p50_ms": round(self.p50_ms, 1),
            "p95_ms": round(self.p95_ms, 1),
            "top1_distractor": round(self.top1_distractor, 4),
            "timed": self.timed or self.questions,
        }


def percentile(values: list[float], pct: float) -> float:
    """Nearest rank, no interpolation (as bench/tenant_create.py)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * pct / 100)) - 1]


def recall_at(outcome: Outcome, k: int) -> float:
    found = {key for keys in outcome.ranked[:k] for key in keys} & set(outcome.gold)
    return len(found) / len(outcome.gold) if outcome.gold else 0.0


def reciprocal_rank(outcome: Outcome, k: int = TOP_K) -> float:
    for rank, keys in enumerate(outcome.ranked[:k], start=1):
        if set(keys) & set(outcome.gold):
            return 1.0 / rank
    return 0.0


def scores(*, mode: str, outcomes: list[Outcome], dataset: str, latencies: list[float] | None = None) -> Scores:
    """``latencies``: timed separately (``questions_ask_shared``); default the outcomes' own."""
    n = len(outcomes) or 1
    latencies = (latencies if latencies is not None else [o.ms for o in outcomes]) or [0.0]
    return Scores(
        mode=mode,
        questions=len(outcomes),
        recall={k: sum(recall_at(o, k) for o in outcomes) / n for k in CUTOFFS},
        mrr=statistics.fmean(reciprocal_rank(o) for o in outcomes) if outcomes else 0.0,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        top1_distractor=sum(
            1 for o in outcomes if o.ranked and not any(k.startswith(f"{dataset}/") for k in o.ranked[0])
        )
        / n,
        timed=len(latencies) if latencies is not None else len(outcomes),
    )


# --------------------------------------------------------------------------------------
# Raw candidate lists, for tuning the fusion offline (bench/retrieval_tune.py)
# --------------------------------------------------------------------------------------
def candidates_collect(
    *,
    questions: list[Question],
    dataset: str,
    documents: dict[str, list[str]],
    depth: int,
    progress: Progress | None = None,
) -> list[dict]:
    """Per question, both candidate lists ``depth`` deep, as ``search.fuse`` gets them:
    ``{"id", "gold", "dense": [[chunk id, passage key, score], ...], "bm25": [...]}``."""
    from apps.knowledge.search import search_candidates

    rows = []
    for done, question in enumerate(questions, start=1):
        dense, bm25, _ = search_candidates(query=question.question, mode="hybrid", limit=depth)
        rows.append(
            {
                "id": question.id,
                "gold": [f"{dataset}/{g}" for g in question.gold_ids],
                "dense": [[h.id, documents.get(h.document_id, ["?"])[0], h.score] for h in dense],
                "bm25": [[h.id, documents.get(h.document_id, ["?"])[0], h.score] for h in bm25],
            }
        )
        if progress:
            progress(done, len(questions))
    return rows


def effective_settings(tenant: Any) -> dict:
    from apps.knowledge.search import search_settings

    return {
        "search": search_settings(tenant),
        "chunk_max_tokens": settings.CHUNK_MAX_TOKENS,
        "chunk_overlap_tokens": settings.CHUNK_OVERLAP_TOKENS,
        "embedding_provider": settings.EMBEDDING_PROVIDER,
        "milvus_uri": settings.MILVUS_URI,
        "milvus_collection": settings.MILVUS_COLLECTION,
    }
