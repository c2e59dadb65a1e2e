"""``search.fuse`` of a single list (dense or bm25 mode) takes a shortcut: no sort. It must
give what fusing that list with an empty other list always gave: the sort by fused score,
ties in the list's order."""

from __future__ import annotations

import random

import pytest

from apps.knowledge.search import DEFAULT_SEARCH_SETTINGS, fuse
from apps.knowledge.vectorstore import VectorHit


def sorted_reference(hits: list[VectorHit], *, is_bm25: bool, conf: dict) -> list[tuple[str, float]]:
    weight = float(conf["bm25_weight" if is_bm25 else "dense_weight"])
    fused = {}
    if conf["fusion"] == "rrf":
        for rank, hit in enumerate(hits, start=1):
            fused[hit.id] = weight / (float(conf["rrf_k"]) + rank)
    else:
        scores = [max(abs(h.score) if is_bm25 else h.score, 0.0) for h in hits]
        best = max(scores, default=0.0)
        for hit, score in zip(hits, scores, strict=True):
            fused[hit.id] = weight * score / best if best > 0.0 else 0.0
    dense_rank = {h.id: i for i, h in enumerate(hits)} if not is_bm25 else {}
    order = sorted(fused, key=lambda cid: (-fused[cid], dense_rank.get(cid, 10**9)))
    return [(cid, fused[cid]) for cid in order]


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("fusion", ["score", "rrf"])
@pytest.mark.parametrize("is_bm25", [False, True])
def test_single_list_as_the_sort_gave_it(seed, fusion, is_bm25):
    rng = random.Random(seed)
    # Best first, as Milvus returns them: cosine descending (some ≤ 0, some equal); BM25 as
    # Lite reports it, negated, so its magnitude descends.
    values = sorted((round(rng.uniform(-0.2, 1.0), 1) for _ in range(rng.randint(0, 30))), reverse=True)
    hits = [VectorHit(id=f"c{i}", document_id="d", score=-v if is_bm25 else v) for i, v in enumerate(values)]
    if is_bm25:
        hits = [h for h in hits if h.score <= 0]
    conf = {**DEFAULT_SEARCH_SETTINGS, "fusion": fusion, "dense_weight": 0.7, "bm25_weight": 1.3}
    dense, bm25 = ([], hits) if is_bm25 else (hits, [])
    assert fuse(dense, bm25, conf) == sorted_reference(hits, is_bm25=is_bm25, conf=conf)


def test_both_lists_still_fused():
    dense = [VectorHit(id="a", document_id="d", score=0.9), VectorHit(id="b", document_id="d", score=0.8)]
    bm25 = [VectorHit(id="b", document_id="d", score=-5.0)]
    assert [cid for cid, _ in fuse(dense, bm25, DEFAULT_SEARCH_SETTINGS)] == ["b", "a"]
