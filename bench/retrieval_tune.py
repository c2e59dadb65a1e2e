"""Tune hybrid fusion offline, over whole evaluation sets.

``manage.py eval_retrieval ... --dump-candidates SET.cand.json`` writes, per question, both
raw candidate lists (dense and BM25, 100 deep) of a run. This script replays
``apps.knowledge.search.fuse`` on them for every combination of a settings grid — no
Milvus, no embedding, a few seconds per thousand combinations — and prints, per set, the
single modes next to the best fused settings. Settings are ranked over all sets together:
first by how many (set, metric) pairs leave hybrid below the better single mode, then by
mean recall@5, then by mean MRR@10. Never tune on single questions.

    .venv/bin/python bench/retrieval_tune.py /tmp/eval/*.cand.json
    .venv/bin/python bench/retrieval_tune.py /tmp/eval/*.cand.json --show '{"rrf_k": 60}'
    .venv/bin/python bench/retrieval_tune.py /tmp/eval/nod/*.cand.json /tmp/eval/dist/*.cand.json
                                        # sets named <folder>/<set> when a name repeats

Dumps are made with the settings of their run; a change to the analyzer, the chunker or the
embedding needs new dumps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

import django  # noqa: E402

django.setup()

from apps.knowledge.search import DEFAULT_SEARCH_SETTINGS, _list_scores, candidate_limit, fuse  # noqa: E402
from apps.knowledge.vectorstore import VectorHit  # noqa: E402

TOP_K = 10
METRICS = ("R@1", "R@5", "R@10", "MRR@10")
GRID = [  # each entry: {setting: [values]}, all combinations
    {
        "fusion": ["score"],
        "dense_weight": [1.0],
        "bm25_weight": [0.6, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5],
        "candidates": [2, 4, 10],
    },
    {
        "fusion": ["rrf"],
        "rrf_k": [1, 5, 10, 20, 60],
        "dense_weight": [1.0],
        "bm25_weight": [0.5, 0.75, 1.0, 1.5, 2.0],
        "candidates": [2, 4, 10],
    },
]


def load(path: Path) -> tuple[str, list[dict], dict[str, str]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    name = path.name.removesuffix(".cand.json")
    passage = {}  # chunk id → passage key
    for row in data["rows"]:
        for chunk_id, key, _ in row["dense"] + row["bm25"]:
            passage[chunk_id] = key
    return name, data["rows"], passage


def metrics(ranked: list[list[str]], golds: list[list[str]]) -> dict[str, float]:
    """``ranked``: per question the passage keys of its top hits, in order."""
    n = len(ranked)
    out = {}
    for k in (1, 5, 10):
        out[f"R@{k}"] = sum(len(set(r[:k]) & set(g)) / len(g) for r, g in zip(ranked, golds, strict=True)) / n
    mrr = 0.0
    for r, g in zip(ranked, golds, strict=True):
        for rank, key in enumerate(r[:TOP_K], start=1):
            if key in g:
                mrr += 1.0 / rank
                break
    out["MRR@10"] = mrr / n
    return out


def hits(pairs: list[list]) -> list[VectorHit]:
    return [VectorHit(id=chunk_id, document_id=key, score=score) for chunk_id, key, score in pairs]


def evaluate(rows: list[dict], passage: dict[str, str], conf: dict, mode: str) -> dict[str, float]:
    depth = candidate_limit(TOP_K, conf)
    ranked = []
    for row in rows:
        dense = hits(row["dense"][:depth]) if mode in ("dense", "hybrid") else []
        bm25 = hits(row["bm25"][:depth]) if mode in ("bm25", "hybrid") else []
        ranked.append([passage[cid] for cid, _ in fuse(dense, bm25, conf)[:TOP_K]])
    return metrics(ranked, [row["gold"] for row in rows])


def passage_id(key: str) -> str:
    """A passage key without its corpus: ``xquad-en/xquad_000_00`` → ``xquad_000_00``. The
    two XQuAD corpora are translations of each other under the same ids."""
    return key.split("/", 1)[-1]


def evaluate_translations(rows: list[dict], passage: dict[str, str], mode: str) -> dict[str, float]:
    """``evaluate`` with the default settings, a passage counting as the gold when it is the
    gold or a translation of it (the same id in another corpus)."""
    depth = candidate_limit(TOP_K, DEFAULT_SEARCH_SETTINGS)
    ranked = []
    for row in rows:
        dense = hits(row["dense"][:depth]) if mode in ("dense", "hybrid") else []
        bm25 = hits(row["bm25"][:depth]) if mode in ("bm25", "hybrid") else []
        ranked.append([passage_id(passage[cid]) for cid, _ in fuse(dense, bm25, DEFAULT_SEARCH_SETTINGS)[:TOP_K]])
    return metrics(ranked, [[passage_id(g) for g in row["gold"]] for row in rows])


def is_chinese_corpus(key: str) -> bool:
    return key.split("/", 1)[0].endswith("-zh")


def evaluate_other_script(rows: list[dict], passage: dict[str, str], *, chinese_questions: bool, lam: float):
    """Default score fusion, except that a passage in the other language than the question
    (by its corpus) gets, for BM25, max(its BM25 share, lam × its dense share): BM25 cannot
    see it, so its absence from BM25's list says nothing. An experiment (``--other-script``),
    not what chunk_search does."""
    depth = candidate_limit(TOP_K, DEFAULT_SEARCH_SETTINGS)
    ranked = []
    for row in rows:
        dense, bm25 = hits(row["dense"][:depth]), hits(row["bm25"][:depth])
        dense_share = dict(_list_scores(dense, is_bm25=False, conf=DEFAULT_SEARCH_SETTINGS))  # as fuse
        bm25_share = dict(_list_scores(bm25, is_bm25=True, conf=DEFAULT_SEARCH_SETTINGS))
        dense_rank = {h.id: i for i, h in enumerate(dense)}
        fused = {}
        for cid in dense_share.keys() | bm25_share.keys():
            lexical = bm25_share.get(cid, 0.0)
            if is_chinese_corpus(passage[cid]) != chinese_questions:
                lexical = max(lexical, lam * dense_share.get(cid, 0.0))
            fused[cid] = dense_share.get(cid, 0.0) + lexical
        order = sorted(fused, key=lambda cid: (-fused[cid], dense_rank.get(cid, 10**9)))
        ranked.append([passage[cid] for cid in order[:TOP_K]])
    return metrics(ranked, [row["gold"] for row in rows])


def grid(spec: list[dict[str, list]] | dict[str, list]) -> list[dict]:
    combos = []
    for block in [spec] if isinstance(spec, dict) else spec:
        unknown = set(block) - set(DEFAULT_SEARCH_SETTINGS)
        if unknown:
            raise SystemExit(f"unknown settings in the grid: {sorted(unknown)}")
        keys = list(block)
        for values in itertools.product(*(block[k] for k in keys)):
            combos.append({**DEFAULT_SEARCH_SETTINGS, **dict(zip(keys, values, strict=True))})
    return combos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dumps", nargs="+", type=Path)
    parser.add_argument("--grid", type=json.loads, help="JSON {setting: [values]} (or a list of them) instead of GRID")
    parser.add_argument("--show", type=json.loads, action="append", default=[], help="also show these settings")
    parser.add_argument("--top", type=int, default=10, help="how many of the best settings to print")
    parser.add_argument(
        "--translations",
        action="store_true",
        help="only score every set with the default settings, a translation of the gold (same id) counting as it",
    )
    parser.add_argument(
        "--other-script",
        type=float,
        nargs="+",
        metavar="LAMBDA",
        help="only replay the experiment of evaluate_other_script for these lambdas (0 = the default fusion); "
        "questions of sets named xquad-zh* are Chinese",
    )
    args = parser.parse_args()

    sets = [load(path) for path in sorted(args.dumps)]
    names = [name for name, _, _ in sets]
    if len(set(names)) != len(names):  # the same set with and without distractors: name by folder too
        paths = sorted(args.dumps)
        sets = [(f"{path.parent.name}/{name}", rows, p) for path, (name, rows, p) in zip(paths, sets, strict=True)]
    width = max(len(name) for name, _, _ in sets)
    if args.translations or args.other_script:
        for name, rows, passage in sets:
            lines = [(mode, evaluate(rows, passage, DEFAULT_SEARCH_SETTINGS, mode)) for mode in ("dense", "bm25")]
            if args.translations:
                lines = [(mode, evaluate_translations(rows, passage, mode)) for mode in ("dense", "bm25", "hybrid")]
            else:
                chinese = name.rsplit("/", 1)[-1].startswith("xquad-zh")
                lines += [
                    (f"λ={lam:g}", evaluate_other_script(rows, passage, chinese_questions=chinese, lam=lam))
                    for lam in args.other_script
                ]
            for label, m in lines:
                print(f"  {name:<{width}} {label:<7} " + " ".join(f"{x} {m[x]:.3f}" for x in METRICS))
        return 0
    single = {
        name: {mode: evaluate(rows, passage, DEFAULT_SEARCH_SETTINGS, mode) for mode in ("dense", "bm25")}
        for name, rows, passage in sets
    }
    candidates = grid(args.grid or GRID)
    print(f"{len(sets)} sets, {len(candidates)} settings", file=sys.stderr)

    def score(conf: dict) -> tuple[int, float, float, dict]:
        per_set = {name: evaluate(rows, passage, conf, "hybrid") for name, rows, passage in sets}
        below = sum(
            1
            for name, m in per_set.items()
            for metric in METRICS
            if m[metric] < max(single[name]["dense"][metric], single[name]["bm25"][metric]) - 1e-9
        )
        r5 = statistics.fmean(m["R@5"] for m in per_set.values())
        mrr = statistics.fmean(m["MRR@10"] for m in per_set.values())
        return below, r5, mrr, per_set

    results = [(conf, *score(conf)) for conf in candidates]
    results.sort(key=lambda r: (r[1], -r[2], -r[3]))
    extra = [{**DEFAULT_SEARCH_SETTINGS, **c} for c in args.show]
    shown = results[: args.top] + [(conf, *score(conf)) for conf in extra]

    names = [name for name, _, _ in sets]
    width = max(len(name) for name in names)
    print("single modes (R@1 / R@5 / R@10 / MRR@10):")
    for name in names:
        for mode in ("dense", "bm25"):
            m = single[name][mode]
            print(f"  {name:<{width}} {mode:<6} " + " ".join(f"{m[x]:.3f}" for x in METRICS))
    print("\nbest hybrid settings (below: (set, metric) pairs under the better single mode):")
    for conf, below, r5, mrr, per_set in shown:
        settings = {k: conf[k] for k in DEFAULT_SEARCH_SETTINGS}
        print(f"\n{json.dumps(settings)}  below={below}  mean R@5={r5:.4f}  mean MRR@10={mrr:.4f}")
        for name in names:
            m = per_set[name]
            best = {x: max(single[name]["dense"][x], single[name]["bm25"][x]) for x in METRICS}
            marks = " ".join(f"{m[x]:.3f}{'<' if m[x] < best[x] - 1e-9 else ' '}" for x in METRICS)
            print(f"  {name:<{width}} {marks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
