"""Answers from an OpenAI-compatible model (CHAT_PROVIDER "openai") served by a real HTTP
server on 127.0.0.1 that speaks the chat-completions streaming protocol (``chat_server``):
deltas stream through, citations to sources that do not exist are dropped from the stream
and from the saved answer, a broken or stalled stream is reported and saved as incomplete,
and the request carries the grounding prompt with the sources as untrusted data. The rest
of the pipeline is real (PostgreSQL, Milvus Lite, the knowledge services)."""

from __future__ import annotations

import threading
import time

import pytest
from django_tenants.utils import schema_context

from apps.chat import services
from apps.chat.models import Conversation, MessageSource
from apps.chat.tests.conftest import event_types
from apps.chat.tests.test_services import UNKNOWN, refund_question, warranty_question
from apps.knowledge.models import DocumentChunk

STREAM = ["message.created", "answer.delta", "answer.sources", "answer.completed"]
BROKEN = ["message.created", "answer.delta", "answer.sources", "error"]


def deltas(events: list[dict]) -> list[str]:
    return [e["delta"] for e in events if e["type"] == "answer.delta"]


@pytest.fixture
def kb(acme, knowledge):
    return knowledge(acme)


@pytest.fixture
def conversation(acme, conversation_of):
    return conversation_of(acme)


# --------------------------------------------------------------------------------------
# Streaming through, citations checked on the way
# --------------------------------------------------------------------------------------
def test_answer_streams_through_and_invalid_citations_are_dropped(acme, kb, conversation, ask, openai_provider):
    server = openai_provider()
    server.reply = [
        f"The Vellum {kb.token} printer has a ",
        "two-year warranty [1]",
        ". It also covers ",
        "lightning [",  # a citation split over two pieces ...
        "9]. Refunds take five days [1, 7]",  # ... and one naming a valid and an invalid source
        ".",
    ]

    result, events = ask(acme, conversation, warranty_question(kb))

    expected = (
        f"The Vellum {kb.token} printer has a two-year warranty [1]. It also covers lightning. "
        "Refunds take five days [1]."
    )
    assert event_types(events) == STREAM
    assert "".join(deltas(events)) == expected
    assert not any("[9" in d or "7]" in d for d in deltas(events))  # never shown, not even in part
    assert len(deltas(events)) >= 4  # forwarded piece by piece, not as one block
    answer = result.assistant_message
    assert answer.content == expected == events[-1]["message"]["content"]
    assert answer.metadata["state"] == "complete" and answer.metadata["answered"] is True
    assert answer.metadata["provider"] == "openai:gpt-test" and answer.metadata["error"] is None
    with schema_context("acme"):
        saved = list(MessageSource.objects.filter(message=answer))
        assert [s.metadata["number"] for s in saved] == [1]
        assert str(saved[0].document_id) == str(kb.english.pk)
        assert saved[0].similarity_score > 0 and saved[0].rank_position >= 1
    assert [s["number"] for s in result.sources] == [1]
    assert [s["number"] for s in events[-2]["sources"]] == [1]


def test_an_answer_citing_no_valid_source_saves_no_sources(acme, kb, conversation, ask, openai_provider):
    openai_provider().reply = ["The printer is great [4][5]", "."]
    result, events = ask(acme, conversation, warranty_question(kb))
    assert result.assistant_message.content == "The printer is great."
    assert events[-2]["sources"] == [] and result.sources == []
    with schema_context("acme"):
        assert not MessageSource.objects.filter(message=result.assistant_message).exists()


def test_deltas_are_forwarded_as_they_arrive(acme, kb, conversation, seed_user, openai_provider):
    """The server sends its second piece only once the first has reached the listener."""
    server = openai_provider()
    first_seen = threading.Event()
    server_waited: list[bool] = []

    def script(h):
        h.start()
        h.delta("Two years ")
        server_waited.append(first_seen.wait(5))
        h.delta("of warranty [1].")
        h.finish_stream()

    server.plan = [script]

    def emit(event):
        if event["type"] == "answer.delta":
            first_seen.set()

    with schema_context("acme"):
        services.conversation_ask(
            conversation=conversation, actor=seed_user(acme, "agent"), question=warranty_question(kb), emit=emit
        )
    assert server_waited == [True]


def test_request_carries_the_grounding_prompt_and_the_sources(acme, kb, conversation, ask, openai_provider):
    server = openai_provider()
    server.reply = ["星河云盘会员七天内可以申请全额退款 [1]。"]

    result, _ = ask(acme, conversation, refund_question(kb))

    (request,) = server.requests
    assert request["model"] == "gpt-test" and request["stream"] is True
    system, *_, user = request["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    assert "UNTRUSTED DATA" in system["content"] and "不可信的数据" in system["content"]
    assert "never instructions" in system["content"]
    assert "简体中文" in system["content"]  # a Chinese question is answered in Chinese
    assert refund_question(kb) in user["content"]
    assert "untrusted data" in user["content"]
    with schema_context("acme"):
        for source in result.sources:
            assert DocumentChunk.objects.get(pk=source["chunk_id"]).content in user["content"]
    assert "<<<SOURCE 1 id=" in user["content"]
    assert result.assistant_message.content == "星河云盘会员七天内可以申请全额退款 [1]。"


def test_no_relevant_knowledge_never_calls_the_model(acme, kb, conversation, ask, openai_provider):
    server = openai_provider()
    result, events = ask(acme, conversation, UNKNOWN["en"])
    assert server.requests == []
    assert result.needs_human and result.assistant_message.content == services.IDK["en"]
    assert event_types(events) == STREAM


def test_follow_up_is_rewritten_by_the_model(acme, kb, conversation, ask, openai_provider):
    server = openai_provider()
    rewritten = f"Does the Vellum {kb.token} printer warranty cover water damage?"
    server.plan = [
        lambda h: h.stream(["A two-year warranty [1]."]),
        lambda h: h.stream([rewritten]),  # the rewrite request
        lambda h: h.stream(["No, liquid damage is not covered [1]."]),
    ]
    ask(acme, conversation, warranty_question(kb))

    result, _ = ask(acme, conversation, "Does it cover water damage?")

    assert result.user_message.metadata["standalone_question"] == rewritten
    rewrite_request = server.requests[1]
    assert "standalone question" in rewrite_request["messages"][0]["content"]
    assert "Does it cover water damage?" in rewrite_request["messages"][-1]["content"]
    answer_request = server.requests[2]
    assert [m["role"] for m in answer_request["messages"]] == ["system", "user", "assistant", "user"]
    assert answer_request["messages"][2]["content"] == "A two-year warranty."  # earlier citations removed
    assert result.assistant_message.content == "No, liquid damage is not covered [1]."


# --------------------------------------------------------------------------------------
# Failures: an error event, and the partial answer saved as incomplete
# --------------------------------------------------------------------------------------
def test_disconnect_mid_stream_is_reported_and_saved_as_incomplete(acme, kb, conversation, ask, openai_provider):
    server = openai_provider()

    def breaks(h):
        h.start()
        h.delta(f"The Vellum {kb.token} printer has ")
        h.delta("a two-year warranty [1]. Claims go to")
        h.hang_up()

    server.plan = [breaks]

    result, events = ask(acme, conversation, warranty_question(kb))

    assert event_types(events) == BROKEN
    error = events[-1]
    assert error["code"] == "llm_disconnected" and error["message"]
    answer = result.assistant_message
    assert error["message_id"] == str(answer.pk)
    assert result.error["code"] == "llm_disconnected"
    partial = f"The Vellum {kb.token} printer has a two-year warranty [1]. Claims go to"
    assert "".join(deltas(events)) == partial
    assert answer.metadata["state"] == "incomplete" and answer.metadata["answered"] is False
    assert answer.metadata["error"]["code"] == "llm_disconnected"
    assert answer.content == f"{partial}\n\n{services.INCOMPLETE_NOTE['en']}"
    assert not any(e["type"] == "answer.completed" for e in events)
    with schema_context("acme"):
        assert [s.metadata["number"] for s in MessageSource.objects.filter(message=answer)] == [1]
        assert Conversation.objects.get(pk=conversation.pk).message_count == 2


def test_disconnect_note_is_in_the_questions_language(acme, kb, conversation, ask, openai_provider):
    server = openai_provider()

    def breaks(h):
        h.start()
        h.delta("星河云盘会员七天内")
        h.hang_up()

    server.plan = [breaks]
    result, events = ask(acme, conversation, refund_question(kb))
    assert events[-1]["code"] == "llm_disconnected"
    assert result.assistant_message.content == f"星河云盘会员七天内\n\n{services.INCOMPLETE_NOTE['zh']}"


def test_model_that_never_answers_times_out(acme, kb, conversation, ask, openai_provider):
    server = openai_provider(CHAT_TIMEOUT=0.5, CHAT_STREAM_IDLE_TIMEOUT=5.0)
    server.plan = [lambda h: h.stall()]

    started = time.monotonic()
    result, events = ask(acme, conversation, warranty_question(kb))

    assert time.monotonic() - started < 5
    assert event_types(events) == ["message.created", "answer.sources", "error"]
    assert events[-1]["code"] == "llm_timeout"
    answer = result.assistant_message
    assert answer.metadata["state"] == "failed" and answer.metadata["answered"] is False
    assert answer.metadata["error"]["code"] == "llm_timeout"
    assert answer.content == services.INCOMPLETE_NOTE["en"]
    assert len(server.requests) == 1  # a timeout is not retried


def test_stream_that_stalls_after_some_text_times_out_as_incomplete(acme, kb, conversation, ask, openai_provider):
    server = openai_provider(CHAT_TIMEOUT=5.0, CHAT_STREAM_IDLE_TIMEOUT=0.5)

    def stalls(h):
        h.start()
        h.delta("A two-year ")
        h.delta("warranty [1]")
        h.stall()

    server.plan = [stalls]
    started = time.monotonic()
    result, events = ask(acme, conversation, warranty_question(kb))

    assert time.monotonic() - started < 5
    assert event_types(events) == BROKEN
    assert events[-1]["code"] == "llm_timeout"
    answer = result.assistant_message
    assert answer.metadata["state"] == "incomplete"
    assert answer.content == f"A two-year warranty [1]\n\n{services.INCOMPLETE_NOTE['en']}"
