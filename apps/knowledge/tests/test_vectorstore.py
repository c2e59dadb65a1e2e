"""The Milvus layout on Lite: one collection per tenant, under MILVUS_COLLECTION."""

from __future__ import annotations

import secrets
import uuid

import pytest

from apps.knowledge import vectorstore
from apps.knowledge.bm25 import analyze, document_vector
from apps.knowledge.pipeline.types import PipelineError
from apps.knowledge.vectorstore import (
    VectorRow,
    collection_drop,
    collection_exists,
    collection_flush,
    collection_name,
    vectors_commit,
    vectors_count,
    vectors_search_bm25,
    vectors_search_dense,
    vectors_tenant_drop,
    vectors_upsert,
)

DIMENSION = 8


@pytest.fixture
def own_collection(settings, milvus_up):
    """A collection name of this test's own on the session's Lite server, dropped after."""
    settings.MILVUS_COLLECTION = f"test_vs_{secrets.token_hex(4)}"
    yield settings.MILVUS_COLLECTION
    collection_drop()


def rows(document_id: str, texts: list[str]) -> list[VectorRow]:
    return [
        VectorRow(
            id=str(uuid.uuid4()),
            document_id=document_id,
            chunk_id=str(uuid.uuid4()),
            vector=[1.0] + [0.0] * (DIMENSION - 1),
            content=text,
            metadata={"n": n},
            sparse=document_vector(text, avgdl=10.0),
        )
        for n, text in enumerate(texts)
    ]


def weights(query: str) -> dict[int, float]:
    """A BM25 query's sparse vector with every term weighing 1 (no IDF: no database here)."""
    return dict.fromkeys(analyze(query)[0], 1.0)


def names() -> set[str]:
    return set(vectorstore._client().list_collections())


def test_each_tenant_gets_a_collection_of_its_own_and_sees_only_its_rows(own_collection):
    acme, globex = str(uuid.uuid4()), str(uuid.uuid4())
    same = ["Reset the X200 router: hold the button for ten seconds."]
    vectors_upsert(tenant_key=acme, rows=rows("a" * 36, same), dimension=DIMENSION)
    vectors_upsert(tenant_key=globex, rows=rows("g" * 36, same), dimension=DIMENSION)
    vectors_commit(tenant_key=acme)
    vectors_commit(tenant_key=globex)

    assert collection_name(tenant_key=acme) == f"{own_collection}__t_{acme.replace('-', '')}"
    assert {collection_name(tenant_key=acme), collection_name(tenant_key=globex)} <= names()
    assert own_collection not in names()  # nothing is written to the base name on Lite
    for key, mine in ((acme, "a" * 36), (globex, "g" * 36)):
        dense = vectors_search_dense(tenant_key=key, vector=[1.0] + [0.0] * (DIMENSION - 1), limit=10)
        bm25 = vectors_search_bm25(tenant_key=key, weights=weights("X200 router"), limit=10)
        assert [h.document_id for h in dense] == [mine] == [h.document_id for h in bm25]
        assert vectors_count(tenant_key=key) == 1


def test_a_tenant_without_vectors_has_no_collection_and_finds_nothing(own_collection):
    nobody = str(uuid.uuid4())

    assert vectors_search_dense(tenant_key=nobody, vector=[1.0] * DIMENSION, limit=5) == []
    assert vectors_search_bm25(tenant_key=nobody, weights=weights("router"), limit=5) == []
    assert vectors_count(tenant_key=nobody) == 0
    vectors_commit(tenant_key=nobody)  # nothing to seal: no error, no collection made
    assert collection_name(tenant_key=nobody) not in names()


def test_dropping_a_tenant_removes_its_collection_only(own_collection):
    acme, globex = str(uuid.uuid4()), str(uuid.uuid4())
    vectors_upsert(tenant_key=acme, rows=rows("a" * 36, ["one", "two"]), dimension=DIMENSION)
    vectors_upsert(tenant_key=globex, rows=rows("g" * 36, ["three"]), dimension=DIMENSION)

    vectors_tenant_drop(tenant_key=acme)

    assert collection_name(tenant_key=acme) not in names()
    assert vectors_count(tenant_key=acme) == 0
    assert vectors_count(tenant_key=globex) == 1
    # Writing again after the drop makes the collection again (the cache forgot it).
    vectors_upsert(tenant_key=acme, rows=rows("a" * 36, ["four"]), dimension=DIMENSION)
    assert vectors_count(tenant_key=acme) == 1


def test_collection_drop_and_flush_cover_every_tenant_collection(own_collection, settings):
    keys = [str(uuid.uuid4()) for _ in range(3)]
    assert not collection_exists()
    for key in keys:
        vectors_upsert(tenant_key=key, rows=rows(key, ["text"]), dimension=DIMENSION)
    other = f"{own_collection}x"  # a neighbour whose name merely starts the same way
    settings.MILVUS_COLLECTION = other
    vectors_upsert(tenant_key=keys[0], rows=rows(keys[0], ["text"]), dimension=DIMENSION)
    settings.MILVUS_COLLECTION = own_collection

    assert collection_exists()
    collection_flush()
    assert all(vectors_count(tenant_key=key) == 1 for key in keys)
    collection_drop()

    assert not collection_exists()
    assert not {collection_name(tenant_key=key) for key in keys} & names()
    settings.MILVUS_COLLECTION = other
    assert vectors_count(tenant_key=keys[0]) == 1  # untouched
    collection_drop()


def test_a_tenant_key_that_cannot_name_a_collection_is_refused(own_collection):
    with pytest.raises(ValueError, match="cannot name a collection"):
        collection_name(tenant_key="--")


def test_a_server_keeps_one_collection_for_every_tenant(settings):
    settings.MILVUS_MODE, settings.MILVUS_COLLECTION = "server", "document_vectors"

    assert collection_name(tenant_key=str(uuid.uuid4())) == "document_vectors"


def test_a_collection_is_sealed_once_enough_rows_wait(own_collection, settings, monkeypatch):
    from pymilvus import MilvusClient

    settings.MILVUS_LITE_SEAL_ROWS = 3
    flushed: list[str] = []
    real_flush = MilvusClient.flush

    def flush(self, collection_name, *args, **kwargs):
        flushed.append(collection_name)
        return real_flush(self, collection_name, *args, **kwargs)

    monkeypatch.setattr(MilvusClient, "flush", flush)
    acme, globex = str(uuid.uuid4()), str(uuid.uuid4())

    vectors_upsert(tenant_key=acme, rows=rows("a" * 36, ["one", "two"]), dimension=DIMENSION)
    vectors_upsert(tenant_key=globex, rows=rows("g" * 36, ["one", "two"]), dimension=DIMENSION)
    assert vectors_commit(tenant_key=acme) is False and flushed == []  # 2 waiting: searched unsealed
    vectors_upsert(tenant_key=acme, rows=rows("b" * 36, ["three"]), dimension=DIMENSION)
    assert vectors_commit(tenant_key=acme) is True
    assert flushed == [collection_name(tenant_key=acme)]  # globex's 2 rows are not acme's count
    vectors_upsert(tenant_key=acme, rows=rows("c" * 36, ["four"]), dimension=DIMENSION)
    assert vectors_commit(tenant_key=acme) is False  # the count started again
    assert vectors_commit(tenant_key=globex) is False

    assert vectors_count(tenant_key=acme) == 4 and vectors_count(tenant_key=globex) == 2
    assert [h.document_id for h in vectors_search_bm25(tenant_key=acme, weights=weights("four"), limit=5)] == ["c" * 36]


def test_a_collection_made_with_milvus_bm25_function_is_refused_not_mixed(own_collection):
    """Collections of the layout before apps/knowledge/bm25.py: ``sparse`` was the output of
    Milvus's BM25 function (per-segment statistics). Our weights must not be written beside
    them nor searched with them: the write path says what to do instead."""
    from pymilvus import DataType, Function, FunctionType, MilvusClient

    acme = str(uuid.uuid4())
    name = collection_name(tenant_key=acme)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, max_length=100, is_primary=True)
    schema.add_field("tenant_id", DataType.VARCHAR, max_length=64)
    schema.add_field("document_id", DataType.VARCHAR, max_length=36)
    schema.add_field("chunk_id", DataType.VARCHAR, max_length=36)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIMENSION)
    schema.add_field("content", DataType.VARCHAR, max_length=65535, enable_analyzer=True)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("metadata", DataType.JSON)
    schema.add_function(
        Function(
            name="content_bm25",
            function_type=FunctionType.BM25,
            input_field_names=["content"],
            output_field_names=["sparse"],
        )
    )
    client = vectorstore._client()
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
    params.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection(name, schema=schema, index_params=params)

    with pytest.raises(PipelineError) as caught:
        vectors_upsert(tenant_key=acme, rows=rows("a" * 36, ["Reset the X200 router."]), dimension=DIMENSION)
    assert caught.value.code == "vector_collection_outdated" and not caught.value.transient
    assert "MILVUS_COLLECTION" in caught.value.message and "reconcile_vectors" in caught.value.message
    assert vectors_count(tenant_key=acme) == 0  # nothing was written
    with pytest.raises(PipelineError) as caught:  # nor searched with our weights
        vectors_search_bm25(tenant_key=acme, weights=weights("X200 router"), limit=5)
    assert caught.value.code == "vector_collection_outdated"


def test_a_new_collection_holds_our_sparse_weights_under_the_ip_metric(own_collection):
    acme = str(uuid.uuid4())
    vectors_upsert(tenant_key=acme, rows=rows("a" * 36, ["Reset the X200 router."]), dimension=DIMENSION)
    description = vectorstore._client().describe_collection(collection_name(tenant_key=acme))
    assert not description.get("functions")
    indexes = vectorstore._client().describe_index(collection_name(tenant_key=acme), "sparse")
    assert indexes["metric_type"] == "IP"
