"""Retrieval quality of chunk_search on a QA set: recall@1/5/10, MRR@10 and latency per mode.

    python manage.py eval_retrieval --dataset ../shared/eval/xquad-zh
    python manage.py eval_retrieval --dataset ../shared/eval/xquad-zh \\
        --distractors ../shared/eval/xquad-en ../shared/eval/stackfaq
    python manage.py eval_retrieval --dataset ../shared/eval/xquad-en \\
        --queries ../shared/eval/xquad-zh/queries.jsonl          # Chinese questions, English passages
    python manage.py eval_retrieval --cleanup                     # tenants left by --keep or a killed run

A throw-away tenant (``eval_<random>``) gets one .txt document per passage through the real
pipeline (document_upload → document_process), the questions go through chunk_search
(top 10, cache off), and everything is removed at the end unless --keep. See
apps/knowledge/evaluation.py and bench/README.md ("Retrieval quality")."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.test import override_settings
from django_tenants.utils import schema_context

from apps.knowledge import evaluation
from apps.knowledge.search import DEFAULT_SEARCH_SETTINGS, MODES
from apps.knowledge.vectorstore import client_reset, collection_drop, collection_exists, collection_flush


class ProgressBar:
    """``[#####.....] 120/240  label  12.3/s  eta 10s`` on stderr; redrawn in place on a
    terminal, one line per 10 % otherwise (logs stay readable)."""

    def __init__(self, label: str, stream=sys.stderr) -> None:
        self.label = label
        self.stream = stream
        self.started = time.monotonic()
        self.last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        width = 30
        filled = width * done // total if total else width
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate else 0.0
        line = (
            f"  [{'#' * filled}{'.' * (width - filled)}] {done:>5}/{total:<5} {self.label:<28} "
            f"{rate:6.1f}/s  {'eta' if done < total else 'took'} {eta if done < total else elapsed:5.0f} s"
        )
        if self.stream.isatty():
            self.stream.write(f"\r{line}" + ("\n" if done >= total else ""))
        else:
            decile = 10 * done // total if total else 10
            if decile == self.last_decile:
                return
            self.last_decile = decile
            self.stream.write(line + "\n")
        self.stream.flush()


def milvus_reachable(uri: str) -> bool:
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=uri, token=settings.MILVUS_TOKEN, timeout=3.0)
        try:
            client.list_collections(timeout=3.0)
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False
    return True


class Command(BaseCommand):
    help = "Measure retrieval quality (recall@k, MRR, latency) of chunk_search on a QA set in a throw-away tenant."

    def add_arguments(self, parser):
        parser.add_argument("--dataset", type=Path, help="folder with corpus.jsonl (+ queries.jsonl)")
        parser.add_argument("--queries", type=Path, help="questions file (default: <dataset>/queries.jsonl)")
        parser.add_argument(
            "--distractors", type=Path, nargs="*", default=[], help="more corpus folders loaded alongside"
        )
        parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
        parser.add_argument(
            "--limit-queries", type=int, metavar="N", help="N questions spread evenly over the file (default all)"
        )
        parser.add_argument("--keep", action="store_true", help="keep the tenant, its documents and vectors")
        parser.add_argument(
            "--milvus-lite",
            action="store_true",
            help="use a fresh temporary Milvus Lite server (default: MILVUS_URI, or such a server if nothing answers)",
        )
        parser.add_argument("--collection", help="Milvus collection to use instead of MILVUS_COLLECTION")
        parser.add_argument(
            "--search-settings",
            type=json.loads,
            metavar="JSON",
            help=f"the tenant's settings['search'] (keys: {', '.join(DEFAULT_SEARCH_SETTINGS)})",
        )
        parser.add_argument("--chunk-max-tokens", type=int, metavar="N", help="CHUNK_MAX_TOKENS for this run")
        parser.add_argument(
            "--flush",
            action="store_true",
            help="flush the collection after loading (Milvus Lite then searches sealed segments, not its write buffer)",
        )
        parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
        parser.add_argument(
            "--dump-candidates",
            type=Path,
            metavar="PATH",
            help="also write both raw candidate lists per question (for bench/retrieval_tune.py)",
        )
        parser.add_argument("--dump-depth", type=int, default=100, help="candidate list depth for --dump-candidates")
        parser.add_argument("--cleanup", action="store_true", help="only remove eval_* tenants of earlier runs")

    def handle(self, *args, **options):
        if options["cleanup"]:
            return self.cleanup()
        if not options["dataset"]:
            raise CommandError("--dataset is required (or --cleanup).")
        if options["keep"] and options["milvus_lite"]:
            raise CommandError("--keep needs a lasting Milvus: the --milvus-lite server is removed at the end.")
        search = options["search_settings"]
        if search is not None:
            unknown = set(search) - set(DEFAULT_SEARCH_SETTINGS)
            if not isinstance(search, dict) or unknown:
                raise CommandError(f"--search-settings: unknown keys {sorted(unknown)}")
        overrides = {}
        if options["collection"]:
            overrides["MILVUS_COLLECTION"] = options["collection"]
        if options["chunk_max_tokens"]:
            if options["chunk_max_tokens"] <= settings.CHUNK_OVERLAP_TOKENS:
                raise CommandError(
                    f"--chunk-max-tokens must exceed CHUNK_OVERLAP_TOKENS ({settings.CHUNK_OVERLAP_TOKENS})"
                )
            overrides["CHUNK_MAX_TOKENS"] = options["chunk_max_tokens"]

        dataset, corpora, questions = self.read_inputs(options)
        # `kill` (SIGTERM) should clean up like Ctrl-C does: unwind through the finally blocks.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        if options["verbosity"] < 2:  # the pipeline logs every document at INFO: thousands of lines
            logging.disable(logging.INFO)
        with override_settings(**overrides), self.milvus(force_lite=options["milvus_lite"]):
            fresh_collection = bool(options["collection"]) and not collection_exists()
            try:
                results = self.run(
                    dataset=dataset, corpora=corpora, questions=questions, options=options, search=search
                )
            finally:
                if fresh_collection and not options["keep"]:
                    collection_drop()
        self.report(results, options)

    # --- inputs ---------------------------------------------------------------------------
    def read_inputs(self, options) -> tuple[str, dict[str, list], list]:
        folders = [options["dataset"], *options["distractors"]]
        for folder in folders:
            if not (folder / "corpus.jsonl").is_file():
                raise CommandError(f"{folder}: no corpus.jsonl")
        labels = [folder.resolve().name for folder in folders]
        if len(set(labels)) != len(labels):
            raise CommandError(f"corpus folders must have different names (got {labels})")
        try:
            corpora = {label: evaluation.corpus_read(folder) for label, folder in zip(labels, folders, strict=True)}
            queries_path = options["queries"] or options["dataset"] / "queries.jsonl"
            questions = evaluation.questions_read(queries_path)
        except (OSError, ValueError, KeyError) as exc:
            raise CommandError(f"cannot read the evaluation files: {exc}") from exc
        dataset = labels[0]
        # Gold ids name passages of --dataset. With --queries from another set (xquad-zh questions
        # over the xquad-en corpus) that only works when the ids are shared: check every one.
        known = {p.id for p in corpora[dataset]}
        missing = [q.id for q in questions if not q.gold_ids or not set(q.gold_ids) <= known]
        if missing:
            raise CommandError(
                f"{len(missing)} of {len(questions)} questions in {queries_path} have gold ids that are not "
                f"passages of {dataset} (first: {missing[:5]})"
            )
        self.stderr.write(f"gold ids: all {len(questions)} questions point at passages of {dataset}")
        questions = evaluation.questions_sample(questions, options["limit_queries"])
        self.queries_label = str(queries_path)
        return dataset, corpora, questions

    # --- Milvus -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def milvus(self, *, force_lite: bool) -> Iterator[None]:
        if not force_lite and milvus_reachable(settings.MILVUS_URI):
            self.stderr.write(f"Milvus: {settings.MILVUS_URI}, collection {settings.MILVUS_COLLECTION}")
            yield
            return
        if not force_lite:
            self.stderr.write(f"Milvus: nothing answers at {settings.MILVUS_URI}; starting a temporary Milvus Lite")
        import pytest  # a dev dependency, like apps.core.testing: only needed here

        from apps.core.testing import start_milvus

        workdir = Path(tempfile.mkdtemp(prefix="zhida-eval-milvus-"))
        server = None
        try:
            try:
                server = start_milvus(workdir)
            except pytest.fail.Exception as exc:  # how start_milvus reports a server that did not come up
                raise CommandError(f"could not start Milvus Lite: {exc}") from exc
            self.stderr.write(f"Milvus: temporary Milvus Lite at {server.url} (data in {workdir})")
            client_reset()
            with override_settings(MILVUS_URI=server.url, MILVUS_MODE="lite", MILVUS_TOKEN=""):
                try:
                    yield
                finally:
                    client_reset()
        finally:
            if server is not None:
                server.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    # --- the run ----------------------------------------------------------------------------
    def run(self, *, dataset: str, corpora: dict[str, list], questions: list, options, search: dict | None) -> dict:
        tenant = evaluation.eval_tenant_create(search=search)
        self.stderr.write(f"tenant: {tenant.schema_name}")
        results = {
            "dataset": dataset,
            "queries": self.queries_label,
            "questions": len(questions),
            "corpora": {label: len(passages) for label, passages in corpora.items()},
            "settings": evaluation.effective_settings(tenant),
            "modes": [],
        }
        try:
            with schema_context(tenant.schema_name):
                load = evaluation.LoadReport()
                for label, passages in corpora.items():
                    evaluation.corpus_load(
                        label=label, passages=passages, report=load, progress=ProgressBar(f"load {label}")
                    )
                if options["flush"]:
                    collection_flush()
                results["load_seconds"] = round(load.seconds, 1)
                results["failed_documents"] = load.failed
                for key, error in load.failed[:10]:
                    self.stderr.write(self.style.WARNING(f"  not indexed: {key}: {error}"))
                for mode in options["modes"]:
                    outcomes = evaluation.questions_ask(
                        tenant=tenant,
                        questions=questions,
                        dataset=dataset,
                        mode=mode,
                        documents=load.documents,
                        progress=ProgressBar(f"ask {mode}"),
                    )
                    results["modes"].append(evaluation.scores(mode=mode, outcomes=outcomes, dataset=dataset))
                if options["dump_candidates"]:
                    rows = evaluation.candidates_collect(
                        questions=questions,
                        dataset=dataset,
                        documents=load.documents,
                        depth=options["dump_depth"],
                        progress=ProgressBar("dump candidates"),
                    )
                    options["dump_candidates"].write_text(
                        json.dumps({**results, "modes": [], "rows": rows}, ensure_ascii=False), encoding="utf-8"
                    )
        finally:
            if options["keep"]:
                self.stderr.write(f"kept tenant {tenant.schema_name} (remove with --cleanup)")
            else:
                self.stderr.write(f"cleaning up {tenant.schema_name}...")
                evaluation.eval_tenant_destroy(tenant)
        return results

    def report(self, results: dict, options) -> None:
        corpora = ", ".join(f"{label} ({n})" for label, n in results["corpora"].items())
        conf = results["settings"]
        self.stdout.write(
            f"\n{results['dataset']}: {results['questions']} questions from {results['queries']}\n"
            f"passages: {corpora}; loaded in {results['load_seconds']:.0f} s"
            + (f"; {len(results['failed_documents'])} NOT INDEXED" if results["failed_documents"] else "")
            + f"\nsearch settings {json.dumps(conf['search'])}, CHUNK_MAX_TOKENS {conf['chunk_max_tokens']}, "
            f"top_k {evaluation.TOP_K}\n"
        )
        distractors = len(results["corpora"]) > 1
        header = f"{'mode':<8} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR@10':>7} {'p50 ms':>7} {'p95 ms':>7}"
        if distractors:
            header += f" {'top-1 distractor':>17}"
        self.stdout.write(header)
        for s in results["modes"]:
            line = (
                f"{s.mode:<8} {s.recall[1]:6.3f} {s.recall[5]:6.3f} {s.recall[10]:6.3f} {s.mrr:7.3f} "
                f"{s.p50_ms:7.1f} {s.p95_ms:7.1f}"
            )
            if distractors:
                line += f" {s.top1_distractor:17.1%}"
            self.stdout.write(line)
        if options["json"]:
            data = {**results, "modes": [s.as_dict() for s in results["modes"]]}
            options["json"].write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")

    def cleanup(self) -> None:
        leftovers = evaluation.eval_leftovers()
        for tenant in leftovers:
            self.stderr.write(f"removing {tenant.schema_name}")
            evaluation.eval_tenant_destroy(tenant)
        self.stdout.write(f"removed {len(leftovers)} evaluation tenant(s)")
