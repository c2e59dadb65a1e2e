"""Retrieval quality of chunk_search on a QA set: recall@1/5/10, MRR@10 and latency per mode.

    python manage.py eval_retrieval --dataset ../shared/eval/xquad-zh
    python manage.py eval_retrieval --dataset ../shared/eval/xquad-zh \\
        --distractors ../shared/eval/xquad-en ../shared/eval/stackfaq
    python manage.py eval_retrieval --dataset ../shared/eval/xquad-en \\
        --queries ../shared/eval/xquad-zh/queries.jsonl          # Chinese questions, English passages
    python manage.py eval_retrieval --dataset ../shared/eval/xquad-en \\
        --distractors ../shared/eval/xquad-zh ../shared/eval/stackfaq \\
        --ask xquad-en xquad-zh stackfaq xquad-en:../shared/eval/xquad-zh/queries.jsonl
                                  # one load, four question sets (each corpus's own, + cross-lingual)
    python manage.py eval_retrieval --cleanup                     # tenants left by --keep or a killed run

A throw-away tenant (``eval_<random>``) gets one .txt document per passage through the real
pipeline (document_upload → document_process), the questions go through chunk_search
(top 10, cache off), and everything is removed at the end unless --keep. ``--ask`` asks
several question sets of the loaded corpora in one run (loading is most of a run's time). See
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
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.test import override_settings
from django_tenants.utils import schema_context

from apps.knowledge import evaluation
from apps.knowledge.search import DEFAULT_SEARCH_SETTINGS, MODES
from apps.knowledge.vectorstore import client_reset, collection_drop, collection_exists, collection_flush


@dataclass(frozen=True)
class QuestionSet:
    name: str  # the corpus's label, or <questions folder>_on_<corpus> (xquad-zh_on_xquad-en)
    dataset: str  # the corpus whose passages the gold ids name
    queries: str
    questions: list


def load_labels(load: evaluation.LoadReport) -> dict[str, int]:
    """Corpus label → passages indexed."""
    counts: dict[str, int] = {}
    for keys in load.documents.values():
        for key in keys:
            label = key.split("/", 1)[0]
            counts[label] = counts.get(label, 0) + 1
    return counts


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
            "--ask",
            nargs="+",
            metavar="CORPUS[:QUERIES]",
            help="question sets to ask instead of --dataset/--queries: a loaded corpus (its folder name) whose "
            "passages the gold ids name, and optionally a questions file (default: that folder's queries.jsonl)",
        )
        parser.add_argument(
            "--distractors", type=Path, nargs="*", default=[], help="more corpus folders loaded alongside"
        )
        parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
        parser.add_argument(
            "--limit-queries", type=int, metavar="N", help="N questions spread evenly over the file (default all)"
        )
        parser.add_argument("--keep", action="store_true", help="keep the tenant, its documents and vectors")
        parser.add_argument(
            "--reuse",
            metavar="SCHEMA",
            help="ask in a tenant kept by an earlier --keep run with the same corpora, instead of loading "
            "(implies --keep; --search-settings replaces its settings['search'])",
        )
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
        parser.add_argument(
            "--shared-candidates",
            action="store_true",
            help="ask Milvus once per question (both lists, --dump-depth deep) and rank every mode from that, "
            "through the code chunk_search runs after Milvus; time --latency-questions real searches per mode",
        )
        parser.add_argument(
            "--latency-questions", type=int, default=300, metavar="N", help="with --shared-candidates (default 300)"
        )
        parser.add_argument("--cleanup", action="store_true", help="only remove eval_* tenants of earlier runs")

    def handle(self, *args, **options):
        if options["cleanup"]:
            return self.cleanup()
        if not options["dataset"]:
            raise CommandError("--dataset is required (or --cleanup).")
        if options["reuse"]:
            options["keep"] = True
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

        corpora, sets = self.read_inputs(options)
        # `kill` (SIGTERM) should clean up like Ctrl-C does: unwind through the finally blocks.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        if options["verbosity"] < 2:  # the pipeline logs every document at INFO: thousands of lines
            logging.disable(logging.INFO)
        with override_settings(**overrides), self.milvus(force_lite=options["milvus_lite"]):
            fresh_collection = bool(options["collection"]) and not collection_exists()
            try:
                results = self.run(corpora=corpora, sets=sets, options=options, search=search)
            finally:
                if fresh_collection and not options["keep"]:
                    collection_drop()
        self.report(results, options)

    # --- inputs ---------------------------------------------------------------------------
    def read_inputs(self, options) -> tuple[dict[str, list], list[QuestionSet]]:
        folders = [options["dataset"], *options["distractors"]]
        for folder in folders:
            if not (folder / "corpus.jsonl").is_file():
                raise CommandError(f"{folder}: no corpus.jsonl")
        labels = [folder.resolve().name for folder in folders]
        if len(set(labels)) != len(labels):
            raise CommandError(f"corpus folders must have different names (got {labels})")
        by_label = dict(zip(labels, folders, strict=True))
        if options["ask"] and options["queries"]:
            raise CommandError("--queries and --ask do not go together (--ask CORPUS:QUERIES).")
        asks = []  # (corpus label, questions file)
        for spec in options["ask"] or [f"{labels[0]}:{options['queries'] or ''}"]:
            label, _, queries = spec.partition(":")
            if label not in by_label:
                raise CommandError(f"--ask {spec}: {label} is not a loaded corpus ({', '.join(labels)})")
            asks.append((label, Path(queries) if queries else by_label[label] / "queries.jsonl"))
        try:
            corpora = {label: evaluation.corpus_read(folder) for label, folder in by_label.items()}
            sets = []
            for label, queries_path in asks:
                questions = evaluation.questions_read(queries_path)
                sets.append(self.question_set(label, queries_path, questions, corpora, options))
        except (OSError, ValueError, KeyError) as exc:
            raise CommandError(f"cannot read the evaluation files: {exc}") from exc
        names = [s.name for s in sets]
        if len(set(names)) != len(names):
            raise CommandError(f"the same question set twice: {names}")
        return corpora, sets

    def question_set(self, label: str, queries_path: Path, questions: list, corpora: dict, options) -> QuestionSet:
        # Gold ids name passages of the corpus asked. With questions from another set (xquad-zh
        # questions over the xquad-en corpus) that only works when the ids are shared: check every one.
        known = {p.id for p in corpora[label]}
        missing = [q.id for q in questions if not q.gold_ids or not set(q.gold_ids) <= known]
        if missing:
            raise CommandError(
                f"{len(missing)} of {len(questions)} questions in {queries_path} have gold ids that are not "
                f"passages of {label} (first: {missing[:5]})"
            )
        self.stderr.write(f"gold ids: all {len(questions)} questions of {queries_path} point at passages of {label}")
        source = queries_path.resolve().parent.name
        name = label if source == label and queries_path.name == "queries.jsonl" else f"{source}_on_{label}"
        return QuestionSet(
            name=name,
            dataset=label,
            queries=str(queries_path),
            questions=evaluation.questions_sample(questions, options["limit_queries"]),
        )

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
    def run(self, *, corpora: dict[str, list], sets: list[QuestionSet], options, search: dict | None) -> dict:
        if options["reuse"]:
            tenant = evaluation.eval_tenant_reuse(schema=options["reuse"], search=search)
        else:
            tenant = evaluation.eval_tenant_create(search=search)
        self.stderr.write(f"tenant: {tenant.schema_name}" + (" (reused)" if options["reuse"] else ""))
        results = {
            "corpora": {label: len(passages) for label, passages in corpora.items()},
            "settings": evaluation.effective_settings(tenant),
            "sets": [],
        }
        try:
            with schema_context(tenant.schema_name):
                load = evaluation.LoadReport()
                if options["reuse"]:
                    evaluation.corpus_loaded(labels=list(corpora), report=load)
                    if load_labels(load) != {label: len(passages) for label, passages in corpora.items()}:
                        raise CommandError(
                            f"{tenant.schema_name} holds {load_labels(load)}, not the corpora asked for "
                            f"({ {label: len(p) for label, p in corpora.items()} })"
                        )
                for label, passages in corpora.items() if not options["reuse"] else ():
                    evaluation.corpus_load(
                        label=label, passages=passages, report=load, progress=ProgressBar(f"load {label}")
                    )
                if options["flush"]:
                    collection_flush()
                results["load_seconds"] = round(load.seconds, 1)
                results["failed_documents"] = load.failed
                for key, error in load.failed[:10]:
                    self.stderr.write(self.style.WARNING(f"  not indexed: {key}: {error}"))
                for qset in sets:
                    results["sets"].append(self.ask(tenant=tenant, qset=qset, load=load, options=options, sets=sets))
        finally:
            if options["keep"]:
                self.stderr.write(f"kept tenant {tenant.schema_name} (remove with --cleanup)")
            else:
                self.stderr.write(f"cleaning up {tenant.schema_name}...")
                evaluation.eval_tenant_destroy(tenant)
        return results

    def ask(self, *, tenant, qset: QuestionSet, load, options, sets: list[QuestionSet]) -> dict:
        out = {
            "name": qset.name,
            "dataset": qset.dataset,
            "queries": qset.queries,
            "questions": len(qset.questions),
            "modes": [],
        }
        rows = None
        if options["shared_candidates"]:
            outcomes, latencies, rows = evaluation.questions_ask_shared(
                tenant=tenant,
                questions=qset.questions,
                dataset=qset.dataset,
                modes=options["modes"],
                documents=load.documents,
                depth=options["dump_depth"],
                latency_questions=options["latency_questions"],
                progress=ProgressBar(f"{qset.name}: ask"),
            )
            for mode in options["modes"]:
                out["modes"].append(
                    evaluation.scores(
                        mode=mode, outcomes=outcomes[mode], dataset=qset.dataset, latencies=latencies[mode]
                    )
                )
        else:
            for mode in options["modes"]:
                outcomes = evaluation.questions_ask(
                    tenant=tenant,
                    questions=qset.questions,
                    dataset=qset.dataset,
                    mode=mode,
                    documents=load.documents,
                    progress=ProgressBar(f"{qset.name}: ask {mode}"),
                )
                out["modes"].append(evaluation.scores(mode=mode, outcomes=outcomes, dataset=qset.dataset))
        if options["dump_candidates"]:
            if rows is None:
                rows = evaluation.candidates_collect(
                    questions=qset.questions,
                    dataset=qset.dataset,
                    documents=load.documents,
                    depth=options["dump_depth"],
                    progress=ProgressBar(f"{qset.name}: dump candidates"),
                )
            target = options["dump_candidates"]
            if len(sets) > 1 or target.is_dir():  # a folder: one <set>.cand.json per question set
                target.mkdir(parents=True, exist_ok=True)
                target = target / f"{qset.name}.cand.json"
            target.write_text(
                json.dumps({**out, "modes": [], "corpora": list(load_labels(load)), "rows": rows}, ensure_ascii=False),
                encoding="utf-8",
            )
        return out

    def report(self, results: dict, options) -> None:
        corpora = ", ".join(f"{label} ({n})" for label, n in results["corpora"].items())
        conf = results["settings"]
        self.stdout.write(
            f"\npassages: {corpora}; loaded in {results['load_seconds']:.0f} s"
            + (f"; {len(results['failed_documents'])} NOT INDEXED" if results["failed_documents"] else "")
            + f"\nsearch settings {json.dumps(conf['search'])}, CHUNK_MAX_TOKENS {conf['chunk_max_tokens']}, "
            f"top_k {evaluation.TOP_K}"
        )
        distractors = len(results["corpora"]) > 1
        for qset in results["sets"]:
            self.stdout.write(
                f"\n{qset['name']}: {qset['questions']} questions from {qset['queries']} over {qset['dataset']}"
                + (" (the other corpora are distractors)" if distractors else "")
            )
            timed = {s.timed for s in qset["modes"]}
            if timed != {qset["questions"]}:
                self.stdout.write(f"(latency: {', '.join(map(str, sorted(timed)))} questions timed per mode)")
            header = f"{'mode':<8} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'MRR@10':>7} {'p50 ms':>7} {'p95 ms':>7}"
            if distractors:
                header += f" {'top-1 distractor':>17}"
            self.stdout.write(header)
            for s in qset["modes"]:
                line = (
                    f"{s.mode:<8} {s.recall[1]:6.3f} {s.recall[5]:6.3f} {s.recall[10]:6.3f} {s.mrr:7.3f} "
                    f"{s.p50_ms:7.1f} {s.p95_ms:7.1f}"
                )
                if distractors:
                    line += f" {s.top1_distractor:17.1%}"
                self.stdout.write(line)
        if options["json"]:
            data = {
                **results,
                "sets": [{**qset, "modes": [s.as_dict() for s in qset["modes"]]} for qset in results["sets"]],
            }
            options["json"].write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")

    def cleanup(self) -> None:
        leftovers = evaluation.eval_leftovers()
        for tenant in leftovers:
            self.stderr.write(f"removing {tenant.schema_name}")
            evaluation.eval_tenant_destroy(tenant)
        self.stdout.write(f"removed {len(leftovers)} evaluation tenant(s)")
