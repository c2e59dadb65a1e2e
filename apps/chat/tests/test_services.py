"""The chat services on the real PostgreSQL (acme's schema), Redis and Milvus Lite, with the
extractive provider: counters, the follow-up rule, "I don't know", citations that quote
their chunks, sources, usage, feedback and the status transitions. Documents are small
Markdown files ingested through the knowledge services (``knowledge`` fixture)."""

from __future__ import annotations

import pytest
from django_tenants.utils import schema_context

from apps.audit.models import AuditLog
from apps.billing.models import UsageRecord
from apps.chat import selectors, services
from apps.chat.extractive import CJK
from apps.chat.models import Conversation, Message, MessageFeedback, MessageSource
from apps.chat.tests.conftest import cited_passages, event_types
from apps.core.exceptions import Conflict, ValidationFailed
from apps.knowledge.models import DocumentChunk

STREAM = ["message.created", "answer.delta", "answer.sources", "answer.completed"]
# Topics none of the test documents touch, in each language.
UNKNOWN = {
    "en": "What is the boiling point of liquid nitrogen on Saturn's moons?",
    "zh": "火星上最高的火山有多高？",
}


def warranty_question(kb) -> str:
    return f"How long is the warranty on the Vellum {kb.token} printer?"


def refund_question(kb) -> str:
    return f"星河云盘{kb.token}会员的退款多久到账？"


def reload(conversation) -> Conversation:
    return Conversation.objects.get(pk=conversation.pk)


# --------------------------------------------------------------------------------------
# Counters and title
# --------------------------------------------------------------------------------------
def test_counters_follow_every_message(acme, knowledge, conversation_of, ask):
    kb = knowledge(acme)
    conversation = conversation_of(acme)
    assert (conversation.message_count, conversation.last_message_at, conversation.title) == (0, None, "")

    first, _ = ask(acme, conversation, warranty_question(kb))
    with schema_context("acme"):
        after_one = reload(conversation)
        assert after_one.message_count == 2
        assert after_one.last_message_at == first.assistant_message.created_at
        assert after_one.title == warranty_question(kb)  # the first question names the conversation

    second, _ = ask(acme, conversation, refund_question(kb))
    with schema_context("acme"):
        after_two = reload(conversation)
        assert after_two.message_count == 4 == Message.objects.filter(conversation=conversation).count()
        assert after_two.last_message_at == second.assistant_message.created_at > after_one.last_message_at
        assert after_two.title == after_one.title  # not renamed by later questions
        assert second.user_message.created_at > first.assistant_message.created_at


# --------------------------------------------------------------------------------------
# The follow-up rule (no model configured)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("first", "follow_up"),
    [
        ("warranty", "Does it cover water damage?"),
        ("warranty", "And what about refunds?"),
        ("refund", "那年度会员呢？"),
        ("refund", "它的存储空间有多大？"),
    ],
)
def test_short_follow_up_carries_the_previous_question(acme, knowledge, conversation_of, ask, first, follow_up):
    kb = knowledge(acme)
    previous = warranty_question(kb) if first == "warranty" else refund_question(kb)
    conversation = conversation_of(acme)
    ask(acme, conversation, previous)

    result, _ = ask(acme, conversation, follow_up)

    assert result.user_message.content == follow_up  # what the person typed is kept as typed
    assert result.user_message.metadata["standalone_question"] == f"{previous} {follow_up}"
    assert result.assistant_message.metadata["retrieval"]["standalone_question"] == f"{previous} {follow_up}"


def test_follow_up_answer_comes_from_the_previous_subject(acme, knowledge, conversation_of, ask):
    kb = knowledge(acme)
    conversation = conversation_of(acme)
    ask(acme, conversation, warranty_question(kb))

    result, _ = ask(acme, conversation, "Does it cover water damage?")

    assert not result.needs_human
    assert "liquids" in result.assistant_message.content
    assert result.sources and all(s["document_id"] == str(kb.english.pk) for s in result.sources)


@pytest.mark.parametrize(
    "standalone",
    [
        "How do I claim a refund for a returned printer?",
        "Is there a fee for late returns?",  # "there" without pointing back
        "我应该如何申请退款？",  # 应该 is not 该
        "其他会员有哪些存储空间？",  # 其他 is not 其
        "What does the warranty cover for printers bought online in the winter sale last year?",  # long
    ],
)
def test_standalone_question_is_left_unchanged(acme, knowledge, conversation_of, ask, standalone):
    kb = knowledge(acme)
    conversation = conversation_of(acme)
    ask(acme, conversation, refund_question(kb))

    result, _ = ask(acme, conversation, standalone)

    assert "standalone_question" not in result.user_message.metadata
    assert result.assistant_message.metadata["retrieval"]["standalone_question"] == standalone


def test_follow_up_of_a_long_question_still_fits_a_search_query(acme, milvus_up, conversation_of, ask):
    from apps.knowledge.search import MAX_QUERY_CHARS

    conversation = conversation_of(acme)
    ask(acme, conversation, "My printer shows error E1234 after this log: " + "paper jam; " * 300)

    result, _ = ask(acme, conversation, "What does it mean?")

    standalone = result.user_message.metadata["standalone_question"]
    assert len(standalone) <= MAX_QUERY_CHARS
    assert standalone.startswith("My printer shows error E1234") and standalone.endswith(" What does it mean?")
    assert result.assistant_message is not None


def test_first_question_is_never_rewritten(acme, knowledge, conversation_of, ask):
    knowledge(acme)
    result, _ = ask(acme, conversation_of(acme), "Does it cover water damage?")
    assert "standalone_question" not in result.user_message.metadata


# --------------------------------------------------------------------------------------
# "I don't know"
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_topic_absent_from_the_documents_is_not_answered(acme, knowledge, conversation_of, ask, lang):
    knowledge(acme)
    conversation = conversation_of(acme)

    result, events = ask(acme, conversation, UNKNOWN[lang])

    answer = result.assistant_message
    assert answer.content == services.IDK[lang]
    assert bool(CJK.search(answer.content)) is (lang == "zh")  # in the question's language
    assert result.needs_human is True and result.sources == []
    assert (answer.metadata["answered"], answer.metadata["state"], answer.metadata["confidence"]) == (
        False,
        "complete",
        0,
    )
    assert event_types(events) == STREAM
    assert [e for e in events if e["type"] == "answer.sources"][0]["sources"] == []
    assert events[-1]["needs_human"] is True
    assert "".join(e["delta"] for e in events if e["type"] == "answer.delta") == services.IDK[lang]
    with schema_context("acme"):
        assert not MessageSource.objects.filter(message=answer).exists()
        conversation = reload(conversation)
        assert conversation.needs_human is True
        assert conversation.priority == "high"
        assert conversation.metadata["needs_human_reason"] == "no_relevant_knowledge"
        assert AuditLog.objects.filter(action="conversation.needs_human", resource_id=str(conversation.pk)).exists()


@pytest.mark.parametrize(
    ("before", "after"), [("low", "high"), ("normal", "high"), ("high", "high"), ("urgent", "urgent")]
)
def test_needs_human_raises_priority_to_high_but_never_lowers_it(acme, milvus_up, conversation_of, ask, before, after):
    conversation = conversation_of(acme, priority=before)
    ask(acme, conversation, UNKNOWN["en"])
    with schema_context("acme"):
        assert reload(conversation).priority == after


def test_answered_question_does_not_flag_the_conversation(acme, knowledge, conversation_of, ask):
    kb = knowledge(acme)
    conversation = conversation_of(acme)
    result, events = ask(acme, conversation, warranty_question(kb))
    assert result.needs_human is False and events[-1]["needs_human"] is False
    with schema_context("acme"):
        assert (reload(conversation).needs_human, reload(conversation).priority) == (False, "normal")


# --------------------------------------------------------------------------------------
# Citations, sources, usage
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["warranty", "refund", "claim"])
def test_every_cited_sentence_is_in_its_sources_chunk(acme, knowledge, conversation_of, ask, which):
    kb = knowledge(acme)
    question = {
        "warranty": warranty_question(kb),
        "refund": refund_question(kb),
        "claim": f"How do I make a warranty claim for the {kb.token} printer?",
    }[which]

    result, events = ask(acme, conversation_of(acme), question)

    answer = result.assistant_message
    passages = cited_passages(answer.content)
    assert passages, answer.content
    by_number = {s["number"]: s for s in result.sources}
    with schema_context("acme"):
        for text, number in passages:
            assert number in by_number, (number, answer.content)
            chunk = DocumentChunk.objects.get(pk=by_number[number]["chunk_id"])
            assert text in chunk.content, (text, chunk.content)
            assert text in by_number[number]["quote"]
    # Nothing outside the cited sentences: the answer is exactly "text [n]" pieces.
    joiner = "" if which == "refund" else " "
    assert answer.content == joiner.join(f"{t} [{n}]" for t, n in passages)
    assert "".join(e["delta"] for e in events if e["type"] == "answer.delta").strip() == answer.content
    assert event_types(events) == STREAM


def test_sources_are_saved_with_similarity_and_rank(acme, knowledge, conversation_of, ask, settings):
    kb = knowledge(acme)
    result, events = ask(acme, conversation_of(acme), warranty_question(kb))

    answer = result.assistant_message
    sent = [e for e in events if e["type"] == "answer.sources"][0]
    assert sent["message_id"] == str(answer.pk)
    assert sent["sources"] == result.sources
    with schema_context("acme"):
        saved = list(MessageSource.objects.filter(message=answer).order_by("rank_position"))
        assert len(saved) == len(result.sources) >= 1
        for row, source in zip(saved, result.sources, strict=True):
            assert str(row.chunk_id) == source["chunk_id"]
            assert str(row.document_id) == source["document_id"] == str(kb.english.pk)
            assert row.similarity_score == source["similarity"]
            assert settings.ANSWER_MIN_SIMILARITY * 0.8 <= row.similarity_score <= 1
            assert row.rank_position == source["rank"] >= 1
            assert row.metadata["number"] == source["number"]
            assert row.metadata["title"] == kb.english.title
            assert row.metadata["quote"] == source["quote"] == DocumentChunk.objects.get(pk=row.chunk_id).content
    assert answer.metadata["confidence"] == max(s["similarity"] for s in result.sources)
    assert answer.metadata["state"] == "complete" and answer.metadata["answered"] is True
    assert answer.metadata["provider"] == "extractive"
    assert answer.metadata["latency"]["first_token_ms"] <= answer.metadata["latency"]["total_ms"]


def test_answer_records_its_token_usage(acme, knowledge, conversation_of, ask, seed_user):
    kb = knowledge(acme)
    agent = seed_user(acme, "agent")
    result, _ = ask(acme, conversation_of(acme), refund_question(kb))

    answer, question = result.assistant_message, result.user_message
    assert question.token_count > 0 and answer.token_count > 0
    usage = UsageRecord.objects.get(usage_type="tokens", metadata__message_id=str(answer.pk))
    assert usage.tenant_id == acme.pk
    assert usage.user_id == agent.pk
    assert (usage.quantity, usage.unit) == (question.token_count + answer.token_count, "tokens")
    assert usage.metadata["provider"] == "extractive"


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("question", "code"),
    [("", "empty_question"), ("   \n\t", "empty_question"), ("x" * 4001, "question_too_long")],
)
def test_invalid_question_stores_nothing(acme, conversation_of, ask, question, code):
    conversation = conversation_of(acme)
    with pytest.raises(ValidationFailed) as caught:
        ask(acme, conversation, question)
    assert caught.value.code == code
    with schema_context("acme"):
        assert reload(conversation).message_count == 0
        assert not Message.objects.filter(conversation=conversation).exists()


def test_question_of_exactly_the_limit_is_accepted(acme, milvus_up, conversation_of, ask):
    result, _ = ask(acme, conversation_of(acme), "星" * services.MAX_QUESTION_CHARS)
    assert len(result.user_message.content) == services.MAX_QUESTION_CHARS


# --------------------------------------------------------------------------------------
# Feedback
# --------------------------------------------------------------------------------------
@pytest.fixture
def answered(acme, milvus_up, conversation_of, ask):
    """(conversation, question message, answer message): an "I don't know" needs no documents."""
    conversation = conversation_of(acme)
    result, _ = ask(acme, conversation, UNKNOWN["en"])
    return conversation, result.user_message, result.assistant_message


def test_feedback_is_one_per_person_and_can_be_changed(acme, seed_user, answered):
    _, _, answer = answered
    agent, admin = seed_user(acme, "agent"), seed_user(acme, "tenant_admin")
    with schema_context("acme"):
        services.message_feedback_set(message=answer, actor=agent, rating="up")
        services.message_feedback_set(message=answer, actor=agent, rating="down", comment="Wrong plan name.")
        services.message_feedback_set(message=answer, actor=admin, rating="up", comment="好")

        rows = {f.author_label: f for f in MessageFeedback.objects.filter(message=answer)}
        assert set(rows) == {agent.email, admin.email}
        assert (rows[agent.email].rating, rows[agent.email].comment, rows[agent.email].user) == (
            "down",
            "Wrong plan name.",
            agent,
        )
        assert (rows[admin.email].rating, rows[admin.email].comment) == ("up", "好")
        assert AuditLog.objects.filter(action="message.feedback", resource_id=str(answer.pk)).count() == 3


def test_feedback_only_on_answers_and_with_a_known_rating(acme, seed_user, answered):
    _, question, answer = answered
    agent = seed_user(acme, "agent")
    with schema_context("acme"):
        with pytest.raises(ValidationFailed) as caught:
            services.message_feedback_set(message=question, actor=agent, rating="up")
        assert caught.value.code == "not_an_answer"
        with pytest.raises(ValidationFailed) as caught:
            services.message_feedback_set(message=answer, actor=agent, rating="meh")
        assert caught.value.code == "invalid_rating"
        assert not MessageFeedback.objects.exists()


# --------------------------------------------------------------------------------------
# Transitions
# --------------------------------------------------------------------------------------
def test_close_reopen_archive(acme, conversation_of, seed_user):
    conversation = conversation_of(acme)
    agent = seed_user(acme, "agent")
    with schema_context("acme"):
        closed = services.conversation_transition(conversation=conversation, actor=agent, action="close")
        assert closed.status == "closed" and closed.closed_at is not None
        assert services.conversation_transition(conversation=closed, actor=agent, action="close").closed_at == (
            closed.closed_at
        )  # closing a closed conversation changes nothing
        reopened = services.conversation_transition(conversation=closed, actor=agent, action="reopen")
        assert reopened.status == "active"
        archived = services.conversation_transition(conversation=reopened, actor=agent, action="archive")
        assert archived.status == "archived" and archived.archived_at is not None
        assert services.conversation_transition(conversation=archived, actor=agent, action="reopen").status == "active"
        closed_again = services.conversation_transition(conversation=archived, actor=agent, action="close")
        assert services.conversation_transition(conversation=closed_again, actor=agent, action="archive").status == (
            "archived"
        )
        actions = list(
            AuditLog.objects.filter(resource_id=str(conversation.pk), action__startswith="conversation.")
            .order_by("created_at")
            .values_list("action", flat=True)
        )
        assert actions == [
            "conversation.created",
            "conversation.close",
            "conversation.reopen",
            "conversation.archive",
            "conversation.reopen",
            "conversation.close",
            "conversation.archive",
        ]


def test_archived_conversation_cannot_be_closed(acme, conversation_of, seed_user):
    conversation = conversation_of(acme)
    agent = seed_user(acme, "agent")
    with schema_context("acme"):
        services.conversation_transition(conversation=conversation, actor=agent, action="archive")
        with pytest.raises(Conflict) as caught:
            services.conversation_transition(conversation=conversation, actor=agent, action="close")
        assert caught.value.code == "invalid_transition"
        assert caught.value.details == {"status": "archived", "action": "close"}
        assert reload(conversation).status == "archived"


@pytest.mark.parametrize("action", ["close", "archive"])
def test_no_question_in_a_conversation_that_is_not_active(acme, conversation_of, seed_user, ask, action):
    conversation = conversation_of(acme)
    with schema_context("acme"):
        services.conversation_transition(conversation=conversation, actor=seed_user(acme, "agent"), action=action)
    with pytest.raises(Conflict) as caught:
        ask(acme, conversation, "How long is the warranty?")
    assert caught.value.code == "conversation_not_active"
    with schema_context("acme"):
        assert reload(conversation).message_count == 0


# --------------------------------------------------------------------------------------
# Updating, and who sees what
# --------------------------------------------------------------------------------------
def test_update_changes_the_editable_fields_only(acme, conversation_of, seed_user):
    conversation = conversation_of(acme, title="Printer", tags=["a"])
    agent = seed_user(acme, "agent")
    with schema_context("acme"):
        updated = services.conversation_update(
            conversation=conversation, actor=agent, priority="urgent", tags=[" vip ", "vip", "", "退款"]
        )
        assert (updated.priority, updated.tags) == ("urgent", ["vip", "退款"])
        audit = AuditLog.objects.get(action="conversation.updated", resource_id=str(conversation.pk))
        assert audit.old_values == {"priority": "normal", "tags": ["a"]}
        with pytest.raises(ValidationFailed):
            services.conversation_update(conversation=conversation, actor=agent, status="closed")
        with pytest.raises(ValidationFailed) as caught:
            services.conversation_update(conversation=conversation, actor=agent, priority="asap")
        assert caught.value.code == "invalid_priority"
        assert reload(conversation).status == "active"


def test_who_sees_which_conversations(acme, conversation_of, seed_user):
    mine = {role: conversation_of(acme, role) for role in ("agent", "user", "knowledge_manager")}
    with schema_context("acme"):
        visible = {
            role: set(selectors.conversation_list(actor=seed_user(acme, role)).values_list("pk", flat=True))
            for role in ("agent", "user", "knowledge_manager", "tenant_admin")
        }
        agent_own = set(
            selectors.conversation_list(actor=seed_user(acme, "agent"), mine_only=True).values_list("pk", flat=True)
        )
        for role in ("user", "knowledge_manager"):
            person = seed_user(acme, role)
            assert selectors.conversation_may_access(actor=person, conversation=mine[role])
            assert not selectors.conversation_may_access(actor=person, conversation=mine["agent"])
    all_ids = {c.pk for c in mine.values()}
    assert all_ids <= visible["agent"] and all_ids <= visible["tenant_admin"]
    assert visible["user"] == {mine["user"].pk}
    assert visible["knowledge_manager"] == {mine["knowledge_manager"].pk}
    assert agent_own == {mine["agent"].pk}


def test_another_tenants_conversation_does_not_exist_here(acme, globex, conversation_of):
    conversation = conversation_of(acme)
    with schema_context("acme"):
        message = Message.objects.create(conversation=conversation, role="assistant", content="Hi")
    with schema_context("globex"):
        assert selectors.conversation_get(conversation_id=conversation.pk) is None
        assert selectors.message_get(message_id=message.pk) is None


# --------------------------------------------------------------------------------------
# The question is embedded once per answer
# --------------------------------------------------------------------------------------
def test_the_question_is_embedded_once_for_search_and_answer(acme, knowledge, conversation_of, ask, embed_calls):
    kb = knowledge(acme)
    calls = embed_calls()
    question = warranty_question(kb)

    first, _ = ask(acme, conversation_of(acme), question)

    assert first.assistant_message.metadata["answered"] is True
    assert calls[0] == [question]  # for the search, which reused it, as did the answer
    assert sum(text == question for batch in calls for text in batch) == 1
    assert len(calls) == 2 and question not in calls[1]  # then the cited passages' sentences, once

    calls.clear()
    second, _ = ask(acme, conversation_of(acme), question)  # the search cache and the sentence cache answer

    assert calls == [[question]]
    assert second.assistant_message.content == first.assistant_message.content
