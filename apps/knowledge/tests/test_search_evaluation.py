"""The retrieval quality harness (``apps/knowledge/evaluation.py``, ``manage.py
eval_retrieval``): its metrics, and that ``--shared-candidates`` (Milvus asked once per
question, every mode ranked from that fetch through ``search.hits_rank``) ranks exactly as
``chunk_search`` does in each mode. Real stack for the latter: the pipeline, the embedding
model, Milvus Lite."""

from __future__ import annotations

import pytest
from django_tenants.utils import schema_context

from apps.knowledge import evaluation
from apps.knowledge.evaluation import Outcome, Passage, Question
from apps.knowledge.search import MODES
from apps.knowledge.tests.search_corpus import MANUAL, RETURNS_SIMPLIFIED, RETURNS_TRADITIONAL

pytest_plugins = ["apps.knowledge.tests.search_fixtures"]  # search_env, index_doc, search...


def outcome(ranked: list[list[str]], gold: list[str]) -> Outcome:
    return Outcome(question_id="q", ranked=tuple(tuple(r) for r in ranked), gold=tuple(gold), ms=0.0)


class TestMetrics:
    def test_recall_counts_gold_passages_within_the_cutoff(self):
        o = outcome([["c/x"], ["c/a"], ["c/y"], ["c/b"]], ["c/a", "c/b"])
        assert evaluation.recall_at(o, 1) == 0.0
        assert evaluation.recall_at(o, 2) == 0.5
        assert evaluation.recall_at(o, 5) == 1.0

    def test_reciprocal_rank_is_that_of_the_first_gold_hit_within_ten(self):
        assert evaluation.reciprocal_rank(outcome([["c/x"], ["c/a"]], ["c/a"])) == 0.5
        assert evaluation.reciprocal_rank(outcome([["c/x"]] * 10 + [["c/a"]], ["c/a"])) == 0.0

    def test_scores_take_separately_timed_latencies(self):
        outcomes = [outcome([["c/a"]], ["c/a"]), outcome([["d/a"]], ["c/a"])]
        s = evaluation.scores(mode="hybrid", outcomes=outcomes, dataset="c", latencies=[5.0, 1.0, 3.0])
        assert (s.recall[1], s.mrr, s.top1_distractor) == (0.5, 0.5, 0.5)
        assert (s.p50_ms, s.p95_ms, s.timed) == (3.0, 5.0, 3)


PASSAGES = [
    Passage(id="manual", title="Pump manual", text=MANUAL),
    Passage(id="returns-s", title="退货政策", text=RETURNS_SIMPLIFIED),
    Passage(id="returns-t", title="退貨政策", text=RETURNS_TRADITIONAL),  # collapses with returns-s
    Passage(
        id="badge",
        title="Onboarding",
        text="New staff receive a Quillfeather badge on their first day; it opens the north entrance.",
    ),
    Passage(id="parking", title="Parking", text="Staff park on level minus two; the gate code changes every Monday."),
]
QUESTIONS = [
    Question(id="1", question="E4471 seal kit", gold_ids=("manual",)),
    Question(id="2", question="how often must the shaft seal be replaced", gold_ids=("manual",)),
    Question(id="3", question="轴封多久需要更换一次？", gold_ids=("manual",)),
    Question(id="4", question="退貨多久退款", gold_ids=("returns-s", "returns-t")),
    Question(id="5", question="What opens the north entrance?", gold_ids=("badge",)),
    Question(id="6", question="  where do staff park  ", gold_ids=("parking",)),
]


@pytest.mark.usefixtures("search_env")
def test_shared_candidates_rank_every_mode_as_chunk_search_does(acme):
    with schema_context(acme.schema_name):
        load = evaluation.LoadReport()
        evaluation.corpus_load(label="tiny", passages=PASSAGES, report=load)
        assert not load.failed and len(load.documents) == len(PASSAGES)
        again = evaluation.LoadReport()
        evaluation.corpus_loaded(labels=["tiny"], report=again)  # what --reuse rebuilds
        assert again.documents == load.documents

        kwargs = {"tenant": acme, "questions": QUESTIONS, "dataset": "tiny", "documents": load.documents}
        one_by_one = {mode: evaluation.questions_ask(mode=mode, **kwargs) for mode in MODES}
        shared, latencies, rows = evaluation.questions_ask_shared(
            modes=list(MODES), depth=100, latency_questions=2, **kwargs
        )

    for mode in MODES:
        assert [o.ranked for o in shared[mode]] == [o.ranked for o in one_by_one[mode]], mode
        assert len(latencies[mode]) == 2
    assert any(o.ranked for o in shared["hybrid"])
    assert [row["id"] for row in rows] == [q.id for q in QUESTIONS]
    assert rows[0]["gold"] == ["tiny/manual"] and rows[0]["bm25"][0][1] == "tiny/manual"
