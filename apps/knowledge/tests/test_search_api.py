"""POST /api/v1/search on acme.localhost: who may search (docs:read or conversations:search,
people and API keys), what the answer carries, the cache seen through the API, stable error
codes for bad input (never a 500), and globex trying the same things on acme's documents
and keys and failing, with nothing metered on either side."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django_tenants.utils import schema_context

from apps.billing.models import UsageRecord
from apps.knowledge.tests.search_corpus import MANUAL, pdf_bytes

URL = "/api/v1/search"
SHARED_TEXT = "# Visitors\n\nVisitors sign the Periwinkle register at the front desk and wear a red lanyard.\n"
HIT_FIELDS = {
    "rank",
    "chunk_id",
    "document_id",
    "document_title",
    "original_name",
    "file_type",
    "page",
    "section",
    "content",
    "highlighted",
    "score",
    "dense_score",
    "dense_rank",
    "bm25_rank",
    "metadata",
}

pytest_plugins = ["apps.knowledge.tests.search_fixtures"]  # search_env, index_doc, search...


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    return body["error"]


def searches(tenant) -> int:
    return UsageRecord.objects.filter(tenant=tenant, usage_type="vector_search").count()


def issue_key(tenant, roles: list[str]) -> str:
    from apps.accounts.services import api_key_create

    with schema_context(tenant.schema_name):
        return api_key_create(name="search test", roles=roles, actor=None).key


def post(client, payload, **kwargs):
    response = client.post(URL, payload, format="json", **kwargs)
    connection.set_schema_to_public()  # the request left the connection in the tenant's schema
    return response


@pytest.fixture
def manual(acme, index_doc):
    return index_doc(acme, "manual.md", MANUAL)


@pytest.fixture
def manager_api(acme, api_for, seed_user):
    return api_for(acme, user=seed_user(acme, "knowledge_manager"))


# =========================================================================================
# Who may search
# =========================================================================================
class TestPermissions:
    @pytest.mark.parametrize("role", ["knowledge_manager", "agent", "tenant_admin", "super_admin"])
    def test_roles_with_docs_read_or_conversations_search_may_search(self, acme, manual, api_for, seed_user, role):
        user = seed_user(acme, role)
        before = searches(acme)
        response = post(api_for(acme, user=user), {"query": "shaft seal"})
        assert response.status_code == 200, response.content
        assert response.json()["hits"][0]["document_id"] == manual.id
        record = UsageRecord.objects.filter(tenant=acme, usage_type="vector_search").latest("recorded_at")
        assert searches(acme) == before + 1
        assert record.user_id == user.pk

    def test_the_user_role_gets_403(self, acme, manual, api_for, seed_user):
        before = searches(acme)
        assert_error(
            post(api_for(acme, user=seed_user(acme, "user")), {"query": "shaft seal"}), 403, "permission_denied"
        )
        assert searches(acme) == before

    def test_anonymous_gets_401(self, acme, manual, api_for):
        before = searches(acme)
        assert_error(post(api_for(acme), {"query": "shaft seal"}), 401, "not_authenticated")
        assert searches(acme) == before

    @pytest.mark.parametrize(("roles", "status"), [(["agent"], 200), (["knowledge_manager"], 200), (["user"], 403)])
    def test_api_keys_search_by_their_roles(self, acme, manual, api_for, roles, status):
        response = post(api_for(acme, api_key=issue_key(acme, roles)), {"query": "shaft seal"})
        assert response.status_code == status, response.content
        if status == 200:
            assert response.json()["hits"][0]["document_id"] == manual.id
            record = UsageRecord.objects.filter(tenant=acme, usage_type="vector_search").latest("recorded_at")
            assert record.user_id is None  # a key is not a person
        else:
            assert_error(response, 403, "permission_denied")

    def test_another_tenants_api_key_gets_401(self, acme, globex, manual, api_for):
        key = issue_key(globex, ["agent"])
        before = (searches(acme), searches(globex))
        assert_error(post(api_for(acme, api_key=key), {"query": "shaft seal"}), 401, "authentication_failed")
        assert (searches(acme), searches(globex)) == before
        assert post(api_for(globex, api_key=key), {"query": "shaft seal"}).status_code == 200  # at home it works

    def test_another_tenants_token_gets_401(self, acme, globex, manual, api_for, seed_user):
        from knox.models import AuthToken
        from rest_framework.test import APIClient

        with schema_context(globex.schema_name):
            _instance, token = AuthToken.objects.create(seed_user(globex, "knowledge_manager"))
        client = APIClient(HTTP_HOST="acme.localhost")
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        before = searches(acme)
        assert_error(post(client, {"query": "shaft seal"}), 401, "authentication_failed")
        assert searches(acme) == before

    def test_a_suspended_tenant_cannot_search(self, initech, api_for, seed_user, search_env):
        response = post(api_for(initech, user=seed_user(initech, "knowledge_manager")), {"query": "shaft seal"})
        assert_error(response, 403, "tenant_suspended")


# =========================================================================================
# The answer
# =========================================================================================
class TestResponse:
    def test_the_answer_carries_ranked_hits_with_scores(self, acme, manual, manager_api):
        response = post(manager_api, {"query": "replace the shaft seal", "top_k": 3, "mode": "hybrid"})
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == {"query", "mode", "top_k", "cached", "timings", "hits"}
        assert (body["query"], body["mode"], body["top_k"], body["cached"]) == (
            "replace the shaft seal",
            "hybrid",
            3,
            False,
        )
        timings = {"embed_ms", "sparse_ms", "milvus_ms", "dense_ms", "bm25_ms", "overhead_ms", "total_ms"}
        assert set(body["timings"]) == timings
        assert 1 <= len(body["hits"]) <= 3
        hit = body["hits"][0]
        assert set(hit) == HIT_FIELDS
        assert [h["rank"] for h in body["hits"]] == list(range(1, len(body["hits"]) + 1))
        assert hit["chunk_id"] in manual.chunk_ids
        assert hit["document_id"] == manual.id
        assert (hit["document_title"], hit["original_name"], hit["file_type"]) == ("manual", "manual.md", "md")
        assert hit["section"] == ["Pump service manual", "Shaft seals"]
        assert hit["page"] is None
        assert "<mark>" in hit["highlighted"]
        assert isinstance(hit["score"], float) and isinstance(hit["dense_score"], float)
        assert 0 < hit["dense_score"] <= 1
        assert hit["dense_rank"] >= 1 and hit["bm25_rank"] >= 1

    def test_a_pdf_hit_names_its_page(self, acme, index_doc, manager_api):
        pdf = index_doc(
            acme,
            "descaling.pdf",
            pdf_bytes([["Contents"], ["Descale the Zephyr heat exchanger with citric acid."]]),
        )
        hit = post(manager_api, {"query": "citric acid descaling"}).json()["hits"][0]
        assert (hit["document_id"], hit["file_type"], hit["page"]) == (pdf.id, "pdf", 2)

    def test_the_second_identical_request_is_cached(self, acme, manual, manager_api):
        first = post(manager_api, {"query": "shaft seal", "top_k": 2}).json()
        second = post(manager_api, {"query": "shaft seal", "top_k": 2}).json()
        assert (first["cached"], second["cached"]) == (False, True)
        assert second["hits"] == first["hits"]
        assert post(manager_api, {"query": "shaft seal", "top_k": 2, "mode": "bm25"}).json()["cached"] is False

    def test_a_metadata_change_through_the_api_invalidates_the_cache(
        self, acme, manual, manager_api, django_capture_on_commit_callbacks
    ):
        payload = {"query": "shaft seal", "filters": {"category": "pumps"}}
        assert post(manager_api, payload).json()["hits"] == []
        assert post(manager_api, payload).json()["cached"] is True
        with django_capture_on_commit_callbacks(execute=True):
            patched = manager_api.patch(f"/api/v1/documents/{manual.id}", {"category": "pumps"}, format="json")
        connection.set_schema_to_public()
        assert patched.status_code == 200, patched.content
        body = post(manager_api, payload).json()
        assert body["cached"] is False
        assert body["hits"][0]["document_id"] == manual.id

    def test_filters_reach_the_search(self, acme, index_doc, manager_api):
        pumps = index_doc(acme, "manual.md", MANUAL, category="pumps", tags=["service"])
        other = index_doc(acme, "seals.txt", "Shaft seal care: wipe the seal with a damp cloth.", category="care")
        assert set(hit_documents_of(post(manager_api, {"query": "shaft seal", "top_k": 20}))) == {pumps.id, other.id}
        only = post(manager_api, {"query": "shaft seal", "top_k": 20, "filters": {"category": "care"}})
        assert set(hit_documents_of(only)) == {other.id}
        tagged = post(manager_api, {"query": "shaft seal", "filters": {"tags": ["service"], "tags_mode": "all"}})
        assert set(hit_documents_of(tagged)) == {pumps.id}
        by_type = post(manager_api, {"query": "shaft seal", "filters": {"file_type": "txt", "language": "zh-CN"}})
        assert set(hit_documents_of(by_type)) == {other.id}
        by_id = post(manager_api, {"query": "shaft seal", "filters": {"document_ids": [pumps.id]}})
        assert set(hit_documents_of(by_id)) == {pumps.id}


def hit_documents_of(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [h["document_id"] for h in response.json()["hits"]]


# =========================================================================================
# Bad input: 400 with a stable code, never a 500
# =========================================================================================
class TestValidation:
    @pytest.mark.parametrize(
        ("payload", "code"),
        [
            ({"query": ""}, "empty_query"),
            ({"query": "   \n "}, "empty_query"),
            ({"query": "x" * 2001}, "query_too_long"),
            ({"query": "问" * 2001}, "query_too_long"),
        ],
        ids=["empty", "blank", "long-latin", "long-chinese"],
    )
    def test_query_errors(self, acme, manager_api, search_env, payload, code):
        before = searches(acme)
        error = assert_error(post(manager_api, payload), 400, code)
        if code == "query_too_long":
            assert error["details"] == {"max_chars": 2000}
        assert searches(acme) == before

    def test_a_query_of_exactly_2000_characters_is_fine(self, acme, manual, manager_api):
        response = post(manager_api, {"query": ("shaft seal " * 200)[:2000], "top_k": 1})
        assert response.status_code == 200, response.content

    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({}, "query"),
            ({"query": None}, "query"),
            ({"query": ["seal"]}, "query"),
            ({"query": "seal\x00"}, "query"),
            ({"query": "seal", "mode": "semantic"}, "mode"),
            ({"query": "seal", "mode": None}, "mode"),
            ({"query": "seal", "top_k": 0}, "top_k"),
            ({"query": "seal", "top_k": 51}, "top_k"),
            ({"query": "seal", "top_k": -1}, "top_k"),
            ({"query": "seal", "top_k": "many"}, "top_k"),
            ({"query": "seal", "top_k": 2.5}, "top_k"),
            ({"query": "seal", "top_k": 10**30}, "top_k"),
            ({"query": "seal", "filters": "category=a"}, "filters"),
            ({"query": "seal", "filters": ["a"]}, "filters"),
            ({"query": "seal", "filters": None}, "filters"),
            ({"query": "seal", "filters": {"colour": "red"}}, "filters"),
            ({"query": "seal", "filters": {"categroy": "pumps"}}, "filters"),
            ({"query": "seal", "filters": {"tags": "faq"}}, "filters"),
            ({"query": "seal", "filters": {"tags": [None]}}, "filters"),
            ({"query": "seal", "filters": {"tags_mode": "some"}}, "filters"),
            ({"query": "seal", "filters": {"document_ids": ["not-a-uuid"]}}, "filters"),
            ({"query": "seal", "filters": {"document_ids": "abc"}}, "filters"),
            ({"query": "seal", "filters": {"file_type": "exe"}}, "filters"),
            ({"query": "seal", "filters": {"category": "x" * 101}}, "filters"),
            ({"query": "seal", "filters": {"language": {"a": 1}}}, "filters"),
        ],
        ids=lambda v: None if isinstance(v, dict) else v,
    )
    def test_bad_parameters_are_400_validation_error_naming_the_field(
        self, acme, manager_api, search_env, payload, field
    ):
        before = searches(acme)
        error = assert_error(post(manager_api, payload), 400, "validation_error")
        assert field in error["details"], error
        assert searches(acme) == before

    def test_an_unknown_filter_is_refused_not_ignored(self, acme, manual, manager_api):
        """A misspelt filter would otherwise widen the search to everything."""
        error = assert_error(
            post(manager_api, {"query": "seal", "filters": {"document_id": [manual.id]}}), 400, "validation_error"
        )
        assert "document_id" in error["details"]["filters"]

    def test_a_body_that_is_not_json_is_400(self, acme, manager_api, search_env):
        response = manager_api.post(URL, data="{not json", content_type="application/json")
        connection.set_schema_to_public()
        assert_error(response, 400, "parse_error")

    def test_get_is_not_allowed(self, acme, manager_api, search_env):
        response = manager_api.get(URL)
        connection.set_schema_to_public()
        assert_error(response, 405, "method_not_allowed")

    @pytest.mark.parametrize(
        "query", ["the", "的", "?", "😀", "\u200b", "((", "OR 1=1 --", "\\", "<script>", "%00", "a" * 2000]
    )
    @pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
    def test_odd_queries_are_answered(self, acme, manual, manager_api, query, mode):
        response = post(manager_api, {"query": query, "mode": mode})
        assert response.status_code == 200, response.content
        assert all("<script>" not in h["highlighted"] for h in response.json()["hits"])


# =========================================================================================
# Globex tries the same
# =========================================================================================
class TestIsolation:
    def test_identical_text_only_finds_the_callers_own_document(self, acme, globex, index_doc, api_for, seed_user):
        mine = index_doc(acme, "visitors.md", SHARED_TEXT)
        theirs = index_doc(globex, "visitors.md", SHARED_TEXT)
        for mode in ("hybrid", "dense", "bm25"):
            payload = {"query": "Periwinkle register", "mode": mode, "top_k": 50}
            in_globex = post(api_for(globex, user=seed_user(globex, "agent")), payload)
            assert set(hit_documents_of(in_globex)) == {theirs.id}, mode
            in_acme = post(api_for(acme, user=seed_user(acme, "agent")), payload)
            assert set(hit_documents_of(in_acme)) == {mine.id}, mode

    def test_globex_cannot_find_acmes_documents(self, acme, globex, manual, api_for, seed_user):
        client = api_for(globex, user=seed_user(globex, "knowledge_manager"))
        for payload in (
            {"query": "XR-7731-B", "mode": "bm25"},
            {"query": "shaft seal", "top_k": 50},
            {"query": "shaft seal", "filters": {"document_ids": [manual.id]}},
            {"query": "shaft seal", "filters": {"document_ids": [str(uuid.uuid4())]}},
        ):
            assert manual.id not in hit_documents_of(post(client, payload)), payload

    def test_an_acme_key_is_unknown_on_globex(self, acme, globex, manual, api_for):
        key = issue_key(acme, ["knowledge_manager"])
        before = (searches(acme), searches(globex))
        assert_error(post(api_for(globex, api_key=key), {"query": "shaft seal"}), 401, "authentication_failed")
        assert (searches(acme), searches(globex)) == before
