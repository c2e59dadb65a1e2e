"""``manage.py reconcile_vectors`` on the real Milvus Lite server: vectors deleted behind the
service's back are re-embedded from the stored chunks, stray vectors (no chunk behind them)
are removed, ``--dry-run`` only reports, ``--tenant`` keeps to that tenant.

Milvus is shared by the whole test session, so the totals printed are compared with a
dry run taken before the drift was made (whatever other tests left is in both)."""

from __future__ import annotations

import re
import uuid
from io import StringIO

import pytest
from django.core.management import call_command

from apps.knowledge import services
from apps.knowledge.tests.conftest import doc, tenant_key_of
from apps.knowledge.vectorstore import (
    VectorRow,
    _client,
    collection_name,
    vectors_delete_ids,
    vectors_ids_by_document,
    vectors_upsert,
)

LINE = re.compile(r"^(\w+): (\d+) documents checked, (?:would )?restore (\d+) vectors, (?:would )?remove (\d+)", re.M)


def reconcile(*args: str) -> tuple[str, dict[str, tuple[int, int]]]:
    """Run the command; (its output, {schema: (restored, removed)})."""
    out = StringIO()
    call_command("reconcile_vectors", *args, stdout=out)
    text = out.getvalue()
    return text, {m[1]: (int(m[3]), int(m[4])) for m in LINE.finditer(text)}


def stray_row(document_id: str, text: str = "a stray vector") -> VectorRow:
    vector = [0.0] * 512
    vector[7] = 1.0
    vector_id = str(uuid.uuid4())
    return VectorRow(
        id=vector_id, document_id=document_id, chunk_id=vector_id, vector=vector, content=text, metadata={}
    )


def ids_of(key: str, document_id) -> set[str]:
    return vectors_ids_by_document(tenant_key=key).get(str(document_id), set())


@pytest.fixture
def drift(indexed):
    """Two indexed acme documents, then drift made behind the services' back: two vectors
    of ``damaged`` deleted, a stray vector added under it and one for a document that does
    not exist; ``intact`` untouched."""
    damaged = indexed(doc("md/wiki.md"))
    intact = indexed(doc("md/mixed.md"))
    key = services.tenant_key()
    _, baseline = reconcile("--tenant", "acme", "--dry-run")
    chunks = list(damaged.chunks.order_by("chunk_index"))
    assert len(chunks) >= 3
    lost = [chunks[0].vector_id, chunks[2].vector_id]
    vectors_delete_ids(tenant_key=key, ids=lost)
    extra = stray_row(str(damaged.pk))
    ghost = stray_row(str(uuid.uuid4()))
    vectors_upsert(tenant_key=key, rows=[extra, ghost], dimension=512)
    return {
        "key": key,
        "damaged": damaged,
        "intact": intact,
        "lost": set(lost),
        "extra": extra,
        "ghost": ghost,
        "baseline": baseline["acme"],
        "expected": {c.vector_id for c in chunks},
        "intact_ids": ids_of(key, intact.pk),
    }


def test_dry_run_reports_and_changes_nothing(drift, capsys):
    key, damaged = drift["key"], drift["damaged"]
    before = vectors_ids_by_document(tenant_key=key)

    text, totals = reconcile("--tenant", "acme", "--dry-run")

    restored, removed = drift["baseline"]
    assert totals == {"acme": (restored + 2, removed + 2)}
    assert "would restore" in text and "would remove" in text
    assert str(damaged.pk) in text and drift["ghost"].document_id in text
    assert str(drift["intact"].pk) not in text.split("documents:")[-1]
    assert vectors_ids_by_document(tenant_key=key) == before
    assert "Done: 0 restored, 0 removed." not in text  # it says what it would do, with numbers
    assert re.search(r"acme \[#+\] \d+/\d+", capsys.readouterr().out)  # the progress bar


def test_reconcile_restores_missing_and_removes_stray_vectors(drift):
    key, damaged = drift["key"], drift["damaged"]

    text, totals = reconcile("--tenant", "acme")

    restored, removed = drift["baseline"]
    assert totals == {"acme": (restored + 2, removed + 2)}
    assert f"Done: {restored + 2} restored, {removed + 2} removed." in text
    assert ids_of(key, damaged.pk) == drift["expected"]
    assert ids_of(key, drift["ghost"].document_id) == set()
    assert ids_of(key, drift["intact"].pk) == drift["intact_ids"]

    rows = _client().query(
        collection_name(tenant_key=key),
        filter=f"id in {sorted(drift['lost'])!r}".replace("'", '"'),
        output_fields=["id", "tenant_id", "document_id", "chunk_id", "content", "metadata"],
    )
    chunks = {c.vector_id: c for c in damaged.chunks.filter(vector_id__in=drift["lost"])}
    assert len(rows) == 2
    for row in rows:
        chunk = chunks[row["id"]]
        assert (row["tenant_id"], row["document_id"], row["chunk_id"]) == (key, str(damaged.pk), str(chunk.pk))
        assert row["content"] == chunk.content and row["metadata"] == chunk.metadata

    _, again = reconcile("--tenant", "acme")
    assert again == {"acme": (0, 0)}  # nothing left to repair


def test_vectors_of_a_deleted_document_are_removed(indexed, manager):
    document = indexed(doc("md/codeblock.md"))
    key = services.tenant_key()
    services.document_delete(document=document, actor=manager)  # the on-commit task never runs here
    assert ids_of(key, document.pk)

    reconcile("--tenant", "acme")

    assert ids_of(key, document.pk) == set()


def test_only_the_named_tenant_is_reconciled(drift):
    globex_key = tenant_key_of("globex")
    globex_ghost = stray_row(str(uuid.uuid4()), "globex stray")
    vectors_upsert(tenant_key=globex_key, rows=[globex_ghost], dimension=512)
    try:
        text, totals = reconcile("--tenant", "acme")
        assert set(totals) == {"acme"} and "globex" not in text
        assert ids_of(globex_key, globex_ghost.document_id) == {globex_ghost.id}  # untouched

        text, totals = reconcile()
        assert {"acme", "globex"} <= set(totals) and "initech" not in totals  # active tenants only
        assert ids_of(globex_key, globex_ghost.document_id) == set()
    finally:
        vectors_delete_ids(tenant_key=globex_key, ids=[globex_ghost.id])
