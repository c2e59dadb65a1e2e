"""The conversations API on the real stack: CRUD with filters, messages with their sources,
asking (JSON, and Server-Sent Events read from the streaming body), transitions, feedback,
validation codes, who may see what, and another tenant trying all of it and failing with
nothing changed. The streaming answer runs on a worker thread with its own database
connection, so those tests commit (``committed``) and clean up."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.audit.models import AuditLog
from apps.chat import services
from apps.chat.models import Conversation, Message, MessageFeedback, MessageSource
from apps.chat.tests.conftest import assert_error, cited_passages, event_types
from apps.chat.tests.test_services import UNKNOWN, refund_question, warranty_question

API = "/api/v1"
STREAM = ["message.created", "answer.delta", "answer.sources", "answer.completed"]


def conv_url(conversation, suffix: str = "") -> str:
    return f"{API}/conversations/{conversation.pk}{suffix}"


def feedback_url(message) -> str:
    return f"{API}/messages/{message.pk}/feedback"


def ids(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


def sse_events(response) -> list[dict]:
    """The events of a Server-Sent Events body, in order (``event:`` must match ``type``)."""
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    body = b"".join(response.streaming_content).decode("utf-8")
    events = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        event = json.loads(fields["data"])
        assert fields["event"] == event["type"]
        events.append(event)
    return events


@pytest.fixture
def agent_api(acme, seed_user, api_for):
    return api_for(acme, seed_user(acme, "agent"))


@pytest.fixture
def agents_conversation(acme, conversation_of):
    return conversation_of(acme, "agent", title="Printer warranty")


# --------------------------------------------------------------------------------------
# Create, read, update
# --------------------------------------------------------------------------------------
def test_create_and_read_a_conversation(acme, agent_api, seed_user):
    response = agent_api.post(
        f"{API}/conversations",
        {"title": "退款咨询", "priority": "high", "tags": ["vip", "vip", "退款"], "context": {"channel": "web"}},
        format="json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["status"] == "active" and created["priority"] == "high"
    assert created["tags"] == ["vip", "退款"]
    assert created["created_by"] == seed_user(acme, "agent").email
    assert (created["message_count"], created["last_message_at"], created["needs_human"]) == (0, None, False)

    detail = agent_api.get(f"{API}/conversations/{created['id']}")
    assert detail.status_code == 200 and detail.json() == created


@pytest.mark.parametrize(
    ("body", "field"),
    [({"priority": "asap"}, "priority"), ({"tags": "vip"}, "tags"), ({"title": "x" * 501}, "title")],
)
def test_create_with_invalid_fields_is_a_validation_error(acme, agent_api, body, field):
    error = assert_error(agent_api.post(f"{API}/conversations", body, format="json"), 400, "validation_error")
    assert field in error["details"]
    with schema_context("acme"):
        assert not Conversation.objects.exists()


def test_patch_changes_title_priority_tags(acme, agent_api, agents_conversation):
    response = agent_api.patch(
        conv_url(agents_conversation), {"priority": "urgent", "tags": ["a", "b"], "category": "billing"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert (response.json()["priority"], response.json()["tags"], response.json()["category"]) == (
        "urgent",
        ["a", "b"],
        "billing",
    )
    assert response.json()["title"] == "Printer warranty"
    assert_error(
        agent_api.patch(conv_url(agents_conversation), {"priority": "asap"}, format="json"), 400, "validation_error"
    )
    # Fields that are not editable are ignored by the serializer, never written.
    agent_api.patch(conv_url(agents_conversation), {"status": "closed", "message_count": 9}, format="json")
    with schema_context("acme"):
        row = Conversation.objects.get(pk=agents_conversation.pk)
        assert (row.status, row.message_count, row.priority) == ("active", 0, "urgent")


# --------------------------------------------------------------------------------------
# Listing with filters
# --------------------------------------------------------------------------------------
@pytest.fixture
def queue(acme, conversation_of):
    """Five conversations with different status, priority, tags, flags and dates."""
    now = timezone.now()
    made = {
        "old": conversation_of(acme, title="Old printer jam", tags=["printer"]),
        "vip": conversation_of(acme, title="VIP refund", priority="urgent", tags=["vip", "refund"]),
        "flagged": conversation_of(acme, title="Unknown topic", tags=["refund"]),
        "closed": conversation_of(acme, title="Closed one", priority="low"),
        "mine": conversation_of(acme, "user", title="会员退款问题"),
    }
    with schema_context("acme"):
        Conversation.objects.filter(pk=made["old"].pk).update(created_at=now - timedelta(days=30))
        Conversation.objects.filter(pk=made["flagged"].pk).update(needs_human=True)
        Conversation.objects.filter(pk=made["closed"].pk).update(status="closed")
        Message.objects.create(conversation=made["closed"], role="user", content="My invoice number is INV-7731")
    return {name: str(c.pk) for name, c in made.items()}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"old", "vip", "flagged", "closed", "mine"}),
        ({"status": "closed"}, {"closed"}),
        ({"status": "active"}, {"old", "vip", "flagged", "mine"}),
        ({"priority": "urgent"}, {"vip"}),
        ({"tags": "refund"}, {"vip", "flagged"}),
        ({"tags": "printer,vip"}, {"old", "vip"}),
        ({"needs_human": "true"}, {"flagged"}),
        ({"needs_human": "false"}, {"old", "vip", "closed", "mine"}),
        ({"search": "refund"}, {"vip"}),
        ({"search": "退款"}, {"mine"}),
        ({"search": "INV-7731"}, {"closed"}),  # found in a message
        ({"created_before": "OLD+1d"}, {"old"}),
        ({"created_after": "OLD+1d"}, {"vip", "flagged", "closed", "mine"}),
        ({"status": "active", "tags": "refund", "needs_human": "false"}, {"vip"}),
        ({"mine": "true"}, {"old", "vip", "flagged", "closed"}),
    ],
)
def test_list_filters(acme, agent_api, queue, params, expected):
    with schema_context("acme"):
        old_created = Conversation.objects.get(pk=queue["old"]).created_at
    params = {k: (old_created + timedelta(days=1)).isoformat() if v == "OLD+1d" else v for k, v in params.items()}
    assert ids(agent_api.get(f"{API}/conversations", params)) == {queue[name] for name in expected}


def test_list_is_newest_activity_first_and_paginated(acme, agent_api, conversation_of):
    first, second = conversation_of(acme, title="a"), conversation_of(acme, title="b")
    with schema_context("acme"):
        Conversation.objects.filter(pk=first.pk).update(last_message_at=timezone.now())
        Conversation.objects.filter(pk=second.pk).update(last_message_at=timezone.now() - timedelta(hours=1))
    body = agent_api.get(f"{API}/conversations", {"limit": 1}).json()
    assert body["count"] == 2 and len(body["results"]) == 1 and body["next"]
    assert body["results"][0]["id"] == str(first.pk)
    assert agent_api.get(f"{API}/conversations", {"limit": 1, "offset": 1}).json()["results"][0]["id"] == str(second.pk)


def test_bad_date_filter_is_a_400(acme, agent_api):
    error = assert_error(agent_api.get(f"{API}/conversations", {"created_after": "yesterday"}), 400, "validation_error")
    assert error["details"] == {"created_after": "yesterday"}


def test_list_queries_do_not_grow_with_the_conversations(acme, agent_api, conversation_of):
    conversation_of(acme)
    agent_api.get(f"{API}/conversations")  # the principal's permissions are loaded once
    with CaptureQueriesContext(connection) as few:
        assert agent_api.get(f"{API}/conversations").status_code == 200
    for _ in range(5):
        conversation_of(acme)
    with CaptureQueriesContext(connection) as many:
        assert len(ids(agent_api.get(f"{API}/conversations"))) == 6
    assert len(many) == len(few)


# --------------------------------------------------------------------------------------
# Asking (JSON) and the messages list
# --------------------------------------------------------------------------------------
def test_ask_returns_the_whole_answer_as_json(acme, agent_api, knowledge, agents_conversation):
    kb = knowledge(acme)
    response = agent_api.post(
        conv_url(agents_conversation, "/messages"), {"content": warranty_question(kb)}, format="json"
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"question", "answer", "needs_human", "error"}
    assert (body["needs_human"], body["error"]) == (False, None)
    assert body["question"]["role"] == "user" and body["question"]["content"] == warranty_question(kb)
    answer = body["answer"]
    assert answer["role"] == "assistant" and answer["parent_message"] == body["question"]["id"]
    assert answer["metadata"]["state"] == "complete"
    assert answer["sources"], answer
    for text, number in cited_passages(answer["content"]):
        source = next(s for s in answer["sources"] if s["number"] == number)
        assert text in source["quote"]
    for source in answer["sources"]:
        assert source["document"] == str(kb.english.pk)
        assert source["similarity_score"] > 0 and source["rank_position"] >= 1
        assert source["title"] == kb.english.title


def test_messages_list_carries_the_sources(acme, agent_api, knowledge, agents_conversation):
    kb = knowledge(acme)
    url = conv_url(agents_conversation, "/messages")
    agent_api.post(url, {"content": warranty_question(kb)}, format="json")
    agent_api.post(url, {"content": refund_question(kb)}, format="json")
    agent_api.post(url, {"content": UNKNOWN["en"]}, format="json")

    with CaptureQueriesContext(connection) as queries:
        response = agent_api.get(url)
    assert response.status_code == 200
    messages = response.json()["results"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert [len(m["sources"]) > 0 for m in messages] == [False, True, False, True, False, False]
    with schema_context("acme"):
        saved = MessageSource.objects.filter(message_id=messages[3]["id"]).order_by("rank_position")
        assert [s["chunk"] for s in messages[3]["sources"]] == [str(s.chunk_id) for s in saved]
        assert Conversation.objects.get(pk=agents_conversation.pk).message_count == 6
    # The sources come in one prefetch, not a query per message.
    agent_api.post(url, {"content": f"{kb.token} printer: does it cover drops?"}, format="json")
    with CaptureQueriesContext(connection) as more:
        assert len(agent_api.get(url).json()["results"]) == 8
    assert len(more) == len(queries)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"content": ""}, 400, "empty_question"),
        ({"content": "   "}, 400, "empty_question"),
        ({"content": "x" * 4001}, 400, "question_too_long"),
        ({"content": "", "stream": True}, 400, "empty_question"),
        ({"content": "x" * 4001, "stream": True}, 400, "question_too_long"),
        ({}, 400, "validation_error"),
        ({"content": "hi", "stream": "perhaps"}, 400, "validation_error"),
    ],
)
def test_ask_validation_errors_are_json_with_stable_codes(acme, agent_api, agents_conversation, body, status, code):
    response = agent_api.post(conv_url(agents_conversation, "/messages"), body, format="json")
    assert_error(response, status, code)
    with schema_context("acme"):
        assert Conversation.objects.get(pk=agents_conversation.pk).message_count == 0


def test_event_stream_client_gets_json_errors(acme, agent_api, agents_conversation):
    response = agent_api.post(
        conv_url(agents_conversation, "/messages"), {"content": " "}, format="json", HTTP_ACCEPT="text/event-stream"
    )
    assert response["Content-Type"] == "application/json"
    assert_error(response, 400, "empty_question")


@pytest.mark.parametrize("stream", [False, True])
def test_asking_in_a_closed_conversation_is_a_409(acme, agent_api, agents_conversation, stream):
    assert agent_api.post(conv_url(agents_conversation, "/close")).status_code == 200
    response = agent_api.post(
        conv_url(agents_conversation, "/messages"), {"content": "Is it covered?", "stream": stream}, format="json"
    )
    assert_error(response, 409, "conversation_not_active")
    with schema_context("acme"):
        assert not Message.objects.filter(conversation=agents_conversation).exists()


def test_unknown_topic_over_the_api(acme, agent_api, milvus_up, agents_conversation):
    response = agent_api.post(conv_url(agents_conversation, "/messages"), {"content": UNKNOWN["zh"]}, format="json")
    body = response.json()
    assert body["needs_human"] is True and body["answer"]["sources"] == []
    assert body["answer"]["content"] == services.IDK["zh"]
    conversation = agent_api.get(conv_url(agents_conversation)).json()
    assert (conversation["needs_human"], conversation["priority"], conversation["message_count"]) == (True, "high", 2)
    assert ids(agent_api.get(f"{API}/conversations", {"needs_human": "true"})) == {str(agents_conversation.pk)}


# --------------------------------------------------------------------------------------
# Server-Sent Events (committed: the answer is written on a worker thread)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["body", "accept"])
def test_ask_with_stream_sends_server_sent_events_in_order(
    committed, committed_knowledge, committed_conversation, api_for, seed_user, how
):
    from apps.tenancy.models import Tenant

    kb = committed_knowledge("acme")
    conversation = committed_conversation("acme")
    acme = Tenant.objects.get(schema_name="acme")
    client = api_for(acme, seed_user(acme, "agent"))
    question = refund_question(kb)
    if how == "body":
        response = client.post(
            conv_url(conversation, "/messages"), {"content": question, "stream": True}, format="json"
        )
    else:
        response = client.post(
            conv_url(conversation, "/messages"), {"content": question}, format="json", HTTP_ACCEPT="text/event-stream"
        )
    assert response["Cache-Control"] == "no-cache"

    events = sse_events(response)

    assert event_types(events) == STREAM
    assert sum(e["type"] == "answer.delta" for e in events) >= 2
    created, completed = events[0], events[-1]
    assert created["message"]["role"] == "user" and created["message"]["content"] == question
    streamed = "".join(e["delta"] for e in events if e["type"] == "answer.delta")
    answer = completed["message"]
    assert streamed.strip() == answer["content"]
    assert completed["needs_human"] is False
    sources = next(e for e in events if e["type"] == "answer.sources")
    assert sources["message_id"] == answer["id"] and sources["sources"]
    with schema_context("acme"):
        saved = Message.objects.get(pk=answer["id"])
        assert saved.content == answer["content"] and saved.parent_message_id is not None
        assert MessageSource.objects.filter(message=saved).count() == len(sources["sources"])
        assert Conversation.objects.get(pk=conversation.pk).message_count == 2


def test_streamed_unknown_topic(committed, committed_conversation, api_for, seed_user):
    from apps.tenancy.models import Tenant

    acme = Tenant.objects.get(schema_name="acme")
    conversation = committed_conversation("acme")
    response = api_for(acme, seed_user(acme, "agent")).post(
        conv_url(conversation, "/messages"), {"content": UNKNOWN["en"], "stream": True}, format="json"
    )
    events = sse_events(response)
    assert event_types(events) == STREAM
    assert events[-1]["needs_human"] is True
    assert next(e for e in events if e["type"] == "answer.sources")["sources"] == []
    assert events[-1]["message"]["content"] == services.IDK["en"]


# --------------------------------------------------------------------------------------
# Transitions and feedback
# --------------------------------------------------------------------------------------
def test_transitions_over_the_api(acme, agent_api, agents_conversation):
    def post(action):
        return agent_api.post(conv_url(agents_conversation, f"/{action}"))

    closed = post("close")
    assert closed.status_code == 200 and closed.json()["status"] == "closed" and closed.json()["closed_at"]
    assert post("close").json()["status"] == "closed"
    assert post("reopen").json()["status"] == "active"
    archived = post("archive")
    assert archived.json()["status"] == "archived" and archived.json()["archived_at"]

    error = assert_error(post("close"), 409, "invalid_transition")
    assert error["details"] == {"status": "archived", "action": "close"}
    assert post("reopen").json()["status"] == "active"
    assert agent_api.post(conv_url(agents_conversation, "/delete")).status_code == 404
    assert agent_api.get(conv_url(agents_conversation, "/close")).status_code == 405


@pytest.fixture
def answer(acme, agent_api, milvus_up, agents_conversation):
    """The assistant message of an "I don't know" (needs no documents), as JSON."""
    body = agent_api.post(conv_url(agents_conversation, "/messages"), {"content": UNKNOWN["en"]}, format="json").json()
    return body


def test_feedback_up_then_down_with_a_comment(acme, agent_api, api_for, seed_user, answer):
    with schema_context("acme"):
        message = Message.objects.get(pk=answer["answer"]["id"])
    response = agent_api.post(feedback_url(message), {"rating": "up"}, format="json")
    assert response.status_code == 201
    assert response.json() == {"message": str(message.pk), "rating": "up", "comment": ""}
    response = agent_api.post(feedback_url(message), {"rating": "down", "comment": "Too vague."}, format="json")
    assert response.json()["rating"] == "down" and response.json()["comment"] == "Too vague."
    api_for(acme, seed_user(acme, "tenant_admin")).post(feedback_url(message), {"rating": "up"}, format="json")
    with schema_context("acme"):
        rows = dict(MessageFeedback.objects.filter(message=message).values_list("author_label", "rating"))
    assert rows == {"agent@acme.test": "down", "tenant_admin@acme.test": "up"}


def test_feedback_errors(acme, agent_api, answer):
    with schema_context("acme"):
        question = Message.objects.get(pk=answer["question"]["id"])
        reply = Message.objects.get(pk=answer["answer"]["id"])
    assert_error(agent_api.post(feedback_url(question), {"rating": "up"}, format="json"), 400, "not_an_answer")
    assert_error(agent_api.post(feedback_url(reply), {"rating": "meh"}, format="json"), 400, "validation_error")
    assert_error(agent_api.post(feedback_url(reply), {}, format="json"), 400, "validation_error")
    response = agent_api.post(f"{API}/messages/00000000-0000-0000-0000-000000000000/feedback", {"rating": "up"})
    assert_error(response, 404, "message_not_found")
    with schema_context("acme"):
        assert not MessageFeedback.objects.exists()


# --------------------------------------------------------------------------------------
# Who may do what inside a tenant
# --------------------------------------------------------------------------------------
def test_agent_sees_every_conversation_of_the_tenant(acme, agent_api, conversation_of):
    theirs = conversation_of(acme, "user")
    assert str(theirs.pk) in ids(agent_api.get(f"{API}/conversations"))
    assert agent_api.get(conv_url(theirs)).status_code == 200
    assert agent_api.get(conv_url(theirs, "/messages")).status_code == 200
    assert agent_api.post(conv_url(theirs, "/close")).status_code == 200


def test_plain_user_sees_only_their_own(acme, api_for, seed_user, milvus_up, agents_conversation, conversation_of):
    user_api = api_for(acme, seed_user(acme, "user"))
    created = user_api.post(f"{API}/conversations", {"title": "My question"}, format="json")
    assert created.status_code == 201
    own = created.json()["id"]
    assert ids(user_api.get(f"{API}/conversations")) == {own}
    asked = user_api.post(f"{API}/conversations/{own}/messages", {"content": UNKNOWN["en"]}, format="json")
    assert asked.status_code == 200
    assert user_api.post(f"{API}/conversations/{own}/close").status_code == 200

    with schema_context("acme"):
        foreign_answer = Message.objects.create(conversation=agents_conversation, role="assistant", content="Hi")
    for response in (
        user_api.get(conv_url(agents_conversation)),
        user_api.get(conv_url(agents_conversation, "/messages")),
        user_api.post(conv_url(agents_conversation, "/messages"), {"content": "Hello?"}, format="json"),
        user_api.patch(conv_url(agents_conversation), {"title": "mine now"}, format="json"),
        user_api.post(conv_url(agents_conversation, "/close")),
    ):
        assert_error(response, 404, "conversation_not_found")
    response = user_api.post(feedback_url(foreign_answer), {"rating": "down"}, format="json")
    assert_error(response, 404, "message_not_found")
    with schema_context("acme"):
        untouched = Conversation.objects.get(pk=agents_conversation.pk)
        assert (untouched.title, untouched.status, untouched.message_count) == ("Printer warranty", "active", 0)
        assert not MessageFeedback.objects.filter(message=foreign_answer).exists()


def test_knowledge_manager_reads_own_conversations_only(acme, api_for, seed_user, conversation_of, agents_conversation):
    own = conversation_of(acme, "knowledge_manager", title="Reviewing answers")
    manager_api = api_for(acme, seed_user(acme, "knowledge_manager"))

    assert ids(manager_api.get(f"{API}/conversations")) == {str(own.pk)}
    assert manager_api.get(conv_url(own)).status_code == 200
    assert manager_api.get(conv_url(own, "/messages")).status_code == 200
    assert_error(manager_api.get(conv_url(agents_conversation)), 404, "conversation_not_found")
    # Reading is all: no new conversations, no questions, no changes.
    assert_error(manager_api.post(f"{API}/conversations", {"title": "x"}, format="json"), 403, "permission_denied")
    assert_error(
        manager_api.post(conv_url(own, "/messages"), {"content": "Hello?"}, format="json"), 403, "permission_denied"
    )
    assert_error(manager_api.patch(conv_url(own), {"title": "renamed"}, format="json"), 403, "permission_denied")
    assert_error(manager_api.post(conv_url(own, "/close")), 403, "permission_denied")
    with schema_context("acme"):
        row = Conversation.objects.get(pk=own.pk)
        assert (row.title, row.status, row.message_count) == ("Reviewing answers", "active", 0)


def test_anonymous_gets_401(acme, api_for, agents_conversation):
    anonymous = api_for(acme)
    assert_error(anonymous.get(f"{API}/conversations"), 401, "not_authenticated")
    assert_error(anonymous.get(conv_url(agents_conversation)), 401, "not_authenticated")
    assert_error(
        anonymous.post(conv_url(agents_conversation, "/messages"), {"content": "hi"}), 401, "not_authenticated"
    )


def test_api_key_client_asks_and_owns_its_conversation(acme, api_for, milvus_up):
    from apps.accounts.services import api_key_create

    with schema_context("acme"):
        issued = api_key_create(name="widget", roles=["user"], actor=None)
    client = api_for(acme, api_key=issued.key)
    created = client.post(f"{API}/conversations", {"title": "From the website widget"}, format="json").json()
    assert created["created_by"].startswith("api_key:widget")
    asked = client.post(f"{API}/conversations/{created['id']}/messages", {"content": UNKNOWN["en"]}, format="json")
    assert asked.status_code == 200 and asked.json()["needs_human"] is True
    assert ids(client.get(f"{API}/conversations")) == {created["id"]}


def test_unknown_and_malformed_ids_are_404(acme, agent_api):
    assert_error(
        agent_api.get(f"{API}/conversations/00000000-0000-0000-0000-000000000000"), 404, "conversation_not_found"
    )
    assert agent_api.get(f"{API}/conversations/not-a-uuid").status_code == 404
    assert agent_api.post(f"{API}/messages/not-a-uuid/feedback", {"rating": "up"}).status_code == 404


@pytest.mark.parametrize(
    ("method", "suffix", "body", "status"),
    [
        ("post", "", {"context": [1, 2]}, 400),
        ("post", "", "{not json", 400),
        ("patch", "/ID", {"tags": [None]}, 400),
        ("patch", "/ID", {"context": "text"}, 400),
        ("get", "?needs_human=maybe&tags=,,,&status=nonsense", None, 200),
        ("get", "?created_after=2026-01-01T00:00:00%2B08:00&created_before=2026-01-01T00:00:00", None, 200),
        ("post", "/ID/messages", {"content": None}, 400),
        ("post", "/ID/messages", {"content": ["a list"]}, 400),
        ("post", "/ID/messages", "{not json", 400),
        ("post", "/ID/close", "{}", 200),
    ],
)
def test_odd_input_is_a_clear_error_never_a_500(acme, agent_api, agents_conversation, method, suffix, body, status):
    url = f"{API}/conversations{suffix.replace('ID', str(agents_conversation.pk))}"
    if isinstance(body, str):
        response = getattr(agent_api, method)(url, body, content_type="application/json")
    else:
        response = getattr(agent_api, method)(url, body, format="json")
    assert response.status_code == status, response.content
    if status >= 400:
        assert response.json()["error"]["code"] in ("validation_error", "parse_error")


# --------------------------------------------------------------------------------------
# Another tenant
# --------------------------------------------------------------------------------------
def acme_state(conversation, message) -> dict:
    with schema_context("acme"):
        row = Conversation.objects.values("status", "title", "priority", "tags", "message_count", "updated_at").get(
            pk=conversation.pk
        )
        return {
            **row,
            "messages": Message.objects.filter(conversation=conversation).count(),
            "feedback": MessageFeedback.objects.filter(message=message).count(),
            "audit": AuditLog.objects.count(),
        }


@pytest.fixture
def acme_answered(acme, agent_api, milvus_up, agents_conversation):
    body = agent_api.post(conv_url(agents_conversation, "/messages"), {"content": UNKNOWN["en"]}, format="json").json()
    with schema_context("acme"):
        return agents_conversation, Message.objects.get(pk=body["answer"]["id"])


def attempts(client, conversation, message) -> list:
    return [
        client.get(conv_url(conversation)),
        client.get(conv_url(conversation, "/messages")),
        client.post(conv_url(conversation, "/messages"), {"content": "What is the warranty?"}, format="json"),
        client.post(conv_url(conversation, "/messages"), {"content": "What is it?", "stream": True}, format="json"),
        client.patch(conv_url(conversation), {"title": "taken over", "priority": "low"}, format="json"),
        client.post(conv_url(conversation, "/close")),
        client.post(conv_url(conversation, "/archive")),
        client.post(feedback_url(message), {"rating": "down", "comment": "from globex"}, format="json"),
    ]


def test_globex_user_cannot_reach_acme_conversations(acme, globex, seed_user, api_for, acme_answered):
    conversation, message = acme_answered
    before = acme_state(conversation, message)
    globex_agent = api_for(globex, seed_user(globex, "agent"))

    assert str(conversation.pk) not in ids(globex_agent.get(f"{API}/conversations"))
    for response in attempts(globex_agent, conversation, message):
        assert response.status_code == 404, response.content
        assert response.json()["error"]["code"] in ("conversation_not_found", "message_not_found")
    assert acme_state(conversation, message) == before


def test_globex_api_key_is_unknown_on_acme(acme, globex, api_for, acme_answered):
    from apps.accounts.services import api_key_create

    conversation, message = acme_answered
    with schema_context("globex"):
        issued = api_key_create(name="globex-bot", roles=["agent"], actor=None)
    before = acme_state(conversation, message)
    on_acme = api_for(acme, api_key=issued.key)

    assert_error(on_acme.get(f"{API}/conversations"), 401, "authentication_failed")
    for response in attempts(on_acme, conversation, message):
        assert_error(response, 401, "authentication_failed")
    assert acme_state(conversation, message) == before


def test_globex_session_is_anonymous_on_acme(acme, globex, seed_user, client_for, acme_answered):
    conversation, message = acme_answered
    before = acme_state(conversation, message)
    globex_session = client_for(globex, seed_user(globex, "agent"))
    globex_session.defaults["HTTP_HOST"] = "acme.localhost"

    response = globex_session.get(f"{API}/conversations")
    assert_error(response, 401, "not_authenticated")
    response = globex_session.post(
        conv_url(conversation, "/messages"), {"content": "hi"}, content_type="application/json"
    )
    assert response.status_code in (401, 403)
    assert acme_state(conversation, message) == before
