"""The admin's hit-testing page (/admin/knowledge/document/hit-test/) and the original-file
view it links to (/admin/knowledge/document/<id>/file/), on acme.localhost with real
sessions: a knowledge manager sees ranked hits with their scores and a link to the file
(at ``#page=N`` for a PDF) and gets the original bytes back; roles without ``docs:read``,
anonymous visitors and globex's knowledge manager get neither."""

from __future__ import annotations

import re
import uuid
from html import unescape

import pytest
from django.db import connection
from django_tenants.utils import schema_context

from apps.billing.models import UsageRecord
from apps.knowledge import services
from apps.knowledge.tests.search_corpus import MANUAL, pdf_bytes

CHANGELIST = "/admin/knowledge/document/"
HIT_TEST = f"{CHANGELIST}hit-test/"
GUIDE_PDF = pdf_bytes(
    [
        ["Zephyr heater guide", "Unpack the heater and read the safety notes."],
        ["Descaling", "Descale the Zephyr heat exchanger every six months with citric acid."],
    ]
)

pytest_plugins = ["apps.knowledge.tests.search_fixtures"]  # search_env, index_doc, search...


def file_url(document_id: str) -> str:
    return f"{CHANGELIST}{document_id}/file/"


def hit_test(client, query: str, **fields):
    params = {"query": query, "mode": "hybrid", "top_k": 5, "category": "", "tags": "", "file_type": "", **fields}
    response = client.get(HIT_TEST, params)
    connection.set_schema_to_public()
    return response


def hit_blocks(response) -> list[str]:
    assert response.status_code == 200, response.content[:500]
    page = response.content.decode()
    return re.findall(r'<div class="hit">(.*?)</div>\s*</div>', page, re.DOTALL)


def searches(tenant) -> int:
    return UsageRecord.objects.filter(tenant=tenant, usage_type="vector_search").count()


@pytest.fixture
def manager_client(acme, client_for, seed_user, search_env):  # logs in after search_env set the cache up
    return client_for(acme, seed_user(acme, "knowledge_manager"))


@pytest.fixture
def docs(acme, index_doc):
    return {
        "pdf": index_doc(acme, "heater-guide.pdf", GUIDE_PDF, title="Zephyr heater guide", category="manuals"),
        "manual": index_doc(acme, "manual.md", MANUAL, category="pumps", tags=["service", "pumps"]),
    }


# =========================================================================================
# The knowledge manager
# =========================================================================================
def test_the_page_shows_the_form_before_a_question(acme, manager_client, search_env):
    before = searches(acme)
    response = manager_client.get(HIT_TEST)
    page = response.content.decode()
    assert 'id="hit-test"' in page and 'name="query"' in page
    assert hit_blocks(response) == []
    assert response.context["result"] is None
    assert searches(acme) == before  # no question, no search
    changelist = manager_client.get(CHANGELIST).content.decode()
    assert f'href="{HIT_TEST}"' in changelist  # reachable from the document list


def test_ranked_hits_with_scores_and_a_link_to_the_pdf_page(acme, manager_client, docs):
    pdf = docs["pdf"]
    response = hit_test(manager_client, "descale the heat exchanger with citric acid")
    blocks = hit_blocks(response)
    assert blocks, response.content.decode()[:2000]
    first = blocks[0]
    assert "#1" in first
    assert f'href="{CHANGELIST}{pdf.id}/change/"' in first
    assert "Zephyr heater guide" in first
    assert f'href="{file_url(pdf.id)}#page=2"' in first  # opens the PDF where the passage is
    assert re.search(r"page\s+2", first)
    assert re.search(r"fused \d+\.\d+", first)
    assert re.search(r"dense 0\.\d+\s+\(#1\)", first)
    assert re.search(r"BM25 #1", first)
    assert "<mark>citric</mark>" in first
    ranks = [int(m) for m in re.findall(r"<h3>#(\d+)", response.content.decode())]
    assert ranks == list(range(1, len(ranks) + 1))
    context_hits = response.context["result"].hits
    assert [h.score for h in context_hits] == sorted((h.score for h in context_hits), reverse=True)
    assert "embed_ms" in response.content.decode()  # the timings line


def test_a_hit_outside_a_pdf_links_to_the_file_without_a_page(acme, manager_client, docs):
    manual = docs["manual"]
    blocks = hit_blocks(hit_test(manager_client, "E4471", mode="bm25"))
    assert len(blocks) == 1
    assert f'href="{file_url(manual.id)}"' in blocks[0]
    assert "#page=" not in blocks[0]
    assert "Pump service manual › Flow problems" in unescape(blocks[0])
    assert "BM25 #1" in blocks[0] and "dense —" in blocks[0]


def test_filters_apply(acme, manager_client, docs):
    def documents(**fields) -> set[str]:
        response = hit_test(manager_client, "heater seal pump", top_k=20, **fields)
        return {h.document_id for h in response.context["result"].hits}

    both = {docs["pdf"].id, docs["manual"].id}
    assert documents() == both
    assert documents(category="manuals") == {docs["pdf"].id}
    assert documents(tags="nothing, service") == {docs["manual"].id}
    assert documents(file_type="pdf") == {docs["pdf"].id}
    assert documents(category="nothing") == set()


def test_the_language_filter_applies(acme, manager_client, index_doc, docs):
    returns = index_doc(acme, "returns.md", "# 退货政策\n\n自签收之日起七天内，加热器可申请无理由退货，退款原路返回。")

    def documents(**fields) -> set[str]:
        response = hit_test(manager_client, "heater 加热器 退货", top_k=20, **fields)
        return {h.document_id for h in response.context["result"].hits}

    # Uploaded without a language: detected from the text when processed.
    assert documents(language="zh-CN") == {returns.id}
    assert documents(language="en") == {docs["pdf"].id, docs["manual"].id}
    assert documents(language="fr") == set()


def test_the_hit_test_is_never_served_from_the_cache(acme, manager_client, docs):
    before = searches(acme)
    for _ in range(2):
        result = hit_test(manager_client, "citric acid").context["result"]
        assert result.cached is False
        assert result.timings["embed_ms"] > 0
    rows = UsageRecord.objects.filter(tenant=acme, usage_type="vector_search").order_by("-recorded_at")[:2]
    assert searches(acme) == before + 2
    assert [r.metadata["cached"] for r in rows] == [False, False]


def test_text_is_escaped_and_only_marks_are_html(acme, manager_client, index_doc):
    index_doc(acme, "xss.md", '# Console\n\nNever paste <script>alert("x")</script> into the console.\n')
    page = hit_test(manager_client, "paste script into the console").content.decode()
    assert "<script>alert" not in page
    assert "&lt;<mark>script</mark>&gt;alert(&quot;x&quot;)" in page


def test_nothing_found_says_so(acme, manager_client, docs):
    response = hit_test(manager_client, "heater", category="nothing")
    assert hit_blocks(response) == []
    assert "Nothing in the knowledge base matches this question." in response.content.decode()


@pytest.mark.parametrize(
    "fields",
    [
        {"query": ""},
        {"query": "   "},
        {"query": "x" * 2001},
        {"mode": "semantic"},
        {"top_k": 0},
        {"top_k": 51},
        {"top_k": "many"},
        {"file_type": "exe"},
    ],
    ids=["empty", "blank", "too-long", "mode", "top_k-0", "top_k-51", "top_k-text", "file_type"],
)
def test_bad_input_shows_the_form_again_not_an_error_page(acme, manager_client, docs, fields):
    before = searches(acme)
    query = fields.pop("query", "heater")
    response = hit_test(manager_client, query, **fields)
    assert response.status_code == 200
    assert response.context["form"].errors
    assert response.context["result"] is None
    assert searches(acme) == before


# =========================================================================================
# The original file
# =========================================================================================
def test_the_file_view_returns_the_original_bytes(acme, manager_client, docs):
    response = manager_client.get(file_url(docs["pdf"].id))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == GUIDE_PDF
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"].startswith("inline")
    assert "heater-guide.pdf" in response["Content-Disposition"]

    markdown = manager_client.get(file_url(docs["manual"].id))
    assert b"".join(markdown.streaming_content) == MANUAL.encode()


def test_the_file_of_a_deleted_or_unknown_document_is_404(acme, seed_user, manager_client, docs):
    with schema_context(acme.schema_name):
        services.document_delete(document=docs["manual"].document, actor=seed_user(acme, "knowledge_manager"))
    assert manager_client.get(file_url(docs["manual"].id)).status_code == 404
    assert manager_client.get(file_url(str(uuid.uuid4()))).status_code == 404
    assert manager_client.get(f"{CHANGELIST}not-a-uuid/file/").status_code in (302, 404)


# =========================================================================================
# Everyone else
# =========================================================================================
@pytest.mark.parametrize("role", ["agent", "user"])
def test_roles_without_docs_read_reach_neither_page(acme, client_for, seed_user, docs, role):
    client = client_for(acme, seed_user(acme, role))
    assert client.get("/api/v1/me").status_code == 200  # logged in: refused for the role, not the session
    connection.set_schema_to_public()
    before = searches(acme)
    for response in (hit_test(client, "citric acid"), client.get(file_url(docs["pdf"].id))):
        assert response.status_code in (302, 403)
        if response.status_code == 302:
            assert "/admin/login/" in response["Location"]
        assert b"citric" not in response.content
        assert not hasattr(response, "streaming_content")
    assert searches(acme) == before


def test_anonymous_is_sent_to_the_login(acme, client_for, docs):
    client = client_for(acme)
    for response in (hit_test(client, "citric acid"), client.get(file_url(docs["pdf"].id))):
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_globex_sees_nothing_of_acme(acme, globex, client_for, seed_user, index_doc, docs):
    theirs = index_doc(globex, "heater-guide.pdf", GUIDE_PDF)  # the very same file
    globex_client = client_for(globex, seed_user(globex, "knowledge_manager"))

    result = hit_test(globex_client, "descale the heat exchanger with citric acid", top_k=50).context["result"]
    assert {h.document_id for h in result.hits} == {theirs.id}
    assert globex_client.get(file_url(docs["pdf"].id)).status_code == 404  # acme's id, on globex

    # globex's session cookie means nothing on acme's domain
    acme_client = client_for(acme)
    acme_client.cookies = globex_client.cookies
    for response in (hit_test(acme_client, "citric acid"), acme_client.get(file_url(docs["pdf"].id))):
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
