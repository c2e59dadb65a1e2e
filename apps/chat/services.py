"""Writes for conversations and the answer pipeline (one service used by the websocket
consumer, the REST endpoint and Server-Sent Events alike)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from apps.audit.services import actor_describe, audit_log_record
from apps.chat import events
from apps.chat.extractive import IDENTIFIER
from apps.chat.models import Conversation, Message, MessageFeedback, MessageSource
from apps.core.exceptions import Conflict, ValidationFailed

logger = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 4000
HISTORY_MESSAGES = 8
PRIORITY_ORDER = ["low", "normal", "high", "urgent"]
EDITABLE = ("title", "priority", "category", "tags", "context")
IDK = {
    "zh": "抱歉，知识库中没有找到与这个问题相关的内容，我不能给出确切答案。已为您转接人工客服处理。",
    "en": "Sorry, the knowledge base does not cover this question, so I can't give you a reliable answer. "
    "I've flagged this conversation for a human agent.",
}
INCOMPLETE_NOTE = {"zh": "（回答生成中断，内容不完整）", "en": "(The answer was interrupted and is incomplete.)"}

Emit = Callable[[dict], None]


def _noop(event: dict) -> None:
    return None


# --------------------------------------------------------------------------------------
# Conversations
# --------------------------------------------------------------------------------------
def _clean_tags(tags: list[str] | None) -> list[str]:
    out: list[str] = []
    for tag in tags or []:
        tag = str(tag).strip()[:100]
        if tag and tag not in out:
            out.append(tag)
    return out


@transaction.atomic
def conversation_create(
    *,
    actor: Any,
    title: str = "",
    priority: str = Conversation.Priority.NORMAL,
    category: str = "",
    tags: list[str] | None = None,
    context: dict | None = None,
) -> Conversation:
    user, label = actor_describe(actor)
    if priority not in Conversation.Priority.values:
        raise ValidationFailed(
            "Unknown priority.", code="invalid_priority", details={"allowed": Conversation.Priority.values}
        )
    conversation = Conversation.objects.create(
        created_by=user,
        created_by_label=label[:255],
        title=title[:500],
        priority=priority,
        category=category[:100],
        tags=_clean_tags(tags),
        context=context or {},
    )
    audit_log_record(
        actor=actor,
        action="conversation.created",
        resource_type="conversation",
        resource_id=conversation.pk,
        new_values={"title": conversation.title, "priority": priority},
    )
    return conversation


@transaction.atomic
def conversation_update(*, conversation: Conversation, actor: Any, **fields: Any) -> Conversation:
    unknown = set(fields) - set(EDITABLE)
    if unknown:
        raise ValidationFailed("These fields cannot be changed.", details={"fields": sorted(unknown)})
    if "priority" in fields and fields["priority"] not in Conversation.Priority.values:
        raise ValidationFailed("Unknown priority.", code="invalid_priority")
    if "tags" in fields:
        fields["tags"] = _clean_tags(fields["tags"])
    old = {k: getattr(conversation, k) for k in fields}
    for key, value in fields.items():
        setattr(conversation, key, value)
    conversation.save(update_fields=[*fields, "updated_at"])
    changed = {k: getattr(conversation, k) for k in fields if old[k] != getattr(conversation, k)}
    if changed:
        audit_log_record(
            actor=actor,
            action="conversation.updated",
            resource_type="conversation",
            resource_id=conversation.pk,
            old_values={k: old[k] for k in changed},
            new_values=changed,
        )
    return conversation


TRANSITIONS = {
    "close": ({Conversation.Status.ACTIVE}, Conversation.Status.CLOSED, "closed_at"),
    "reopen": ({Conversation.Status.CLOSED, Conversation.Status.ARCHIVED}, Conversation.Status.ACTIVE, None),
    "archive": ({Conversation.Status.ACTIVE, Conversation.Status.CLOSED}, Conversation.Status.ARCHIVED, "archived_at"),
}


@transaction.atomic
def conversation_transition(*, conversation: Conversation, actor: Any, action: str) -> Conversation:
    allowed_from, target, stamp = TRANSITIONS[action]
    conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
    if conversation.status == target:
        return conversation
    if conversation.status not in allowed_from:
        raise Conflict(
            f"A conversation that is {conversation.status} cannot be {action}d.",
            code="invalid_transition",
            details={"status": conversation.status, "action": action},
        )
    old = conversation.status
    conversation.status = target
    update = ["status", "updated_at"]
    if stamp:
        setattr(conversation, stamp, timezone.now())
        update.append(stamp)
    conversation.save(update_fields=update)
    audit_log_record(
        actor=actor,
        action=f"conversation.{action}",
        resource_type="conversation",
        resource_id=conversation.pk,
        old_values={"status": old},
        new_values={"status": target},
    )
    return conversation


@transaction.atomic
def message_feedback_set(*, message: Message, actor: Any, rating: str, comment: str = "") -> MessageFeedback:
    if message.role != Message.Role.ASSISTANT:
        raise ValidationFailed("Only answers can be rated.", code="not_an_answer")
    if rating not in MessageFeedback.Rating.values:
        raise ValidationFailed("Rating is 'up' or 'down'.", code="invalid_rating")
    user, label = actor_describe(actor)
    feedback, _ = MessageFeedback.objects.update_or_create(
        message=message, author_label=label[:255], defaults={"user": user, "rating": rating, "comment": comment[:4000]}
    )
    audit_log_record(
        actor=actor,
        action="message.feedback",
        resource_type="message",
        resource_id=message.pk,
        new_values={"rating": rating, "comment": comment[:200]},
    )
    return feedback


# --------------------------------------------------------------------------------------
# Answering
# --------------------------------------------------------------------------------------
@dataclass
class AnswerResult:
    user_message: Message
    assistant_message: Message | None
    needs_human: bool
    sources: list[dict] = field(default_factory=list)
    error: dict | None = None


def _token_count(text: str) -> int:
    from apps.knowledge.pipeline.chunk import token_count

    return token_count(text)


def message_serialize(message: Message) -> dict:
    return {
        "id": str(message.pk),
        "conversation_id": str(message.conversation_id),
        "role": message.role,
        "content": message.content,
        "content_type": message.content_type,
        "token_count": message.token_count,
        "metadata": message.metadata,
        "parent_message_id": str(message.parent_message_id) if message.parent_message_id else None,
        "created_at": message.created_at.isoformat(),
    }


def _message_add(
    *, conversation: Conversation, role: str, content: str, parent: Message | None = None, metadata: dict | None = None
) -> Message:
    message = Message.objects.create(
        conversation=conversation,
        parent_message=parent,
        role=role,
        content=content,
        token_count=_token_count(content),
        metadata=metadata or {},
    )
    Conversation.objects.filter(pk=conversation.pk).update(
        message_count=F("message_count") + 1, last_message_at=message.created_at, updated_at=timezone.now()
    )
    return message


ANAPHORA = re.compile(
    r"\b(it|its|this|that|these|those|they|them|he|she|his|her|one)\b|^(and|what about|how about)\b"
    # "there" points back ("what's the fee there?"), "is there …" does not
    r"|(?<!\bis )(?<!\bare )(?<!\bwas )(?<!\bwere )\bthere\b"
    # 该/此/其/它 point back, but not inside 应该, 因此/如此/彼此/此外, 其他/其它/其中/其实/其余/尤其/极其
    r"|(?<!其)它|他们|她们|这个|那个|这些|那些|(?<!应)该|(?<![因如彼])此(?!外)|(?<![尤极])其(?![他它中实余])"
    r"|^那|^还有|呢[？?]?$",
    re.IGNORECASE,
)


def question_rewrite(*, question: str, history: list[Message]) -> str:
    """A follow-up made standalone. With an LLM configured, the model rewrites it; otherwise
    a deterministic rule: a short question that refers back (pronoun, "and …", "那…呢")
    carries the previous question's subject by being appended to it."""
    previous = next((m for m in reversed(history) if m.role == Message.Role.USER), None)
    if previous is None:
        return question
    from apps.chat.llm import get_chat_provider

    provider = get_chat_provider()
    if provider is not None:
        from apps.chat.llm import ChatMessage, build_rewrite_messages

        try:
            rewritten = provider.complete(
                build_rewrite_messages(
                    question=question,
                    history=[ChatMessage(role=m.role, content=m.content) for m in history[-HISTORY_MESSAGES:]],
                ),
                max_tokens=120,
            ).strip()
            if rewritten:
                return rewritten[:MAX_QUESTION_CHARS]
        except Exception:  # noqa: BLE001 - a failed rewrite falls back to the rule
            logger.warning("Question rewrite failed; using the rule", exc_info=True)
    short = len(question) <= 60
    if short and ANAPHORA.search(question.strip()):
        from apps.knowledge.search import MAX_QUERY_CHARS

        base = previous.metadata.get("standalone_question") or previous.content
        # Retrieval reads MAX_QUERY_CHARS: shorten the carried subject, never the follow-up.
        return f"{base[: max(0, MAX_QUERY_CHARS - len(question) - 1)]} {question}".strip()
    return question


def _exact_identifier_hit(question: str, hit) -> bool:
    """A part number or error code from the question (letters and digits, e.g. E1234,
    XR-7731-B) found verbatim in the passage: strong evidence BM25 found the right one."""
    return any(code.lower() in hit.content.lower() for code in IDENTIFIER.findall(question))


def _relevant(hits: list, question: str) -> list:
    """Hits that clear the calibrated threshold: the cosine similarity of the query with the
    passage (BM25 and fused scores are not calibrated and are never thresholded), or an
    exact identifier match ranked first by BM25."""
    threshold = settings.ANSWER_MIN_SIMILARITY
    floor = threshold * 0.8
    relevant = [
        h for h in hits if (h.dense_score or 0) >= floor or (h.bm25_rank == 1 and _exact_identifier_hit(question, h))
    ]
    if not relevant or not (
        max((h.dense_score or 0) for h in relevant) >= threshold
        or any(h.bm25_rank == 1 and _exact_identifier_hit(question, h) for h in relevant)
    ):
        return []
    return relevant[: settings.ANSWER_MAX_SOURCES]


def _raise_priority(conversation: Conversation) -> str:
    current = PRIORITY_ORDER.index(conversation.priority)
    return PRIORITY_ORDER[max(current, PRIORITY_ORDER.index("high"))]


def question_validate(*, conversation: Conversation, question: str) -> str:
    """The question, stripped, if it may be asked in this conversation now; raises
    ``empty_question``, ``question_too_long`` or ``conversation_not_active`` otherwise
    (callers that stream check first, so these stay plain errors)."""
    question = (question or "").strip()
    if not question:
        raise ValidationFailed("The question is empty.", code="empty_question")
    if len(question) > MAX_QUESTION_CHARS:
        raise ValidationFailed(
            f"The question is longer than {MAX_QUESTION_CHARS} characters.",
            code="question_too_long",
            details={"max_chars": MAX_QUESTION_CHARS},
        )
    if conversation.status != Conversation.Status.ACTIVE:
        raise Conflict("This conversation is not active; reopen it first.", code="conversation_not_active")
    return question


def conversation_ask(
    *, conversation: Conversation, actor: Any, question: str, emit: Emit | None = None
) -> AnswerResult:
    """Answer one question in a conversation, streaming events through ``emit``.

    1. store the question; 2. rewrite a follow-up into a standalone question; 3. hybrid
    retrieval; 4. nothing relevant → say so in the question's language, flag the
    conversation for a human, cite nothing; 5. otherwise generate (extractive, or the
    configured LLM) and stream; 6. store the answer with its sources and usage."""
    from apps.chat.extractive import language_of

    emit = emit or _noop
    question = question_validate(conversation=conversation, question=question)
    started = time.perf_counter()
    history = list(conversation.messages.order_by("-created_at")[:HISTORY_MESSAGES])[::-1]
    with transaction.atomic():
        user_message = _message_add(conversation=conversation, role=Message.Role.USER, content=question)
        if not conversation.title:
            Conversation.objects.filter(pk=conversation.pk, title="").update(title=question[:80])
    emit({"type": events.MESSAGE_CREATED, "message": message_serialize(user_message)})

    lang = language_of(question)
    standalone = question_rewrite(question=question, history=history)
    if standalone != question:
        user_message.metadata["standalone_question"] = standalone
        user_message.save(update_fields=["metadata", "updated_at"])

    from apps.knowledge.search import MAX_QUERY_CHARS, chunk_search, query_embedding

    t = time.perf_counter()
    query = standalone[:MAX_QUERY_CHARS].strip()  # a question may be longer than a search query
    # Embedded once, here: the search uses it (unless its cache answers) and so does the
    # extractive answer, to rank the passages' sentences.
    query_vector = query_embedding(query)
    result = chunk_search(
        tenant=_current_tenant(),
        query=query,
        top_k=settings.ANSWER_RETRIEVAL_TOP_K,
        mode="hybrid",
        user_id=getattr(actor, "pk", None) if hasattr(actor, "email") else None,
        query_vector=query_vector,
    )
    retrieval_ms = (time.perf_counter() - t) * 1000
    relevant = _relevant(result.hits, standalone)
    timing = {"retrieval_ms": round(retrieval_ms, 1)}

    if not relevant:
        return _answer_unknown(
            conversation=conversation,
            actor=actor,
            user_message=user_message,
            lang=lang,
            emit=emit,
            timing=timing,
            standalone=standalone,
            started=started,
        )
    sources = [
        {
            "number": i + 1,
            "rank": hit.rank,
            "document_id": hit.document_id,
            "chunk_id": hit.chunk_id,
            "title": hit.document_title,
            "page": hit.page,
            "section": hit.section,
            "text": hit.content,
            "similarity": hit.dense_score,
            "file_type": hit.file_type,
        }
        for i, hit in enumerate(relevant)
    ]
    return _answer_generate(
        conversation=conversation,
        actor=actor,
        user_message=user_message,
        question=question,
        standalone=standalone,
        lang=lang,
        sources=sources,
        history=history,
        emit=emit,
        timing=timing,
        started=started,
        query_vector=query_vector,
    )


def _current_tenant():
    from apps.tenancy.models import Tenant

    tenant = getattr(connection, "tenant", None)
    if getattr(tenant, "pk", None):
        return tenant
    return Tenant.objects.get(schema_name=connection.schema_name)


def _answer_unknown(*, conversation, actor, user_message, lang, emit, timing, standalone, started) -> AnswerResult:
    text = IDK[lang]
    for piece in _pieces(text):
        emit({"type": events.ANSWER_DELTA, "message_id": None, "delta": piece})
    with transaction.atomic():
        conv = Conversation.objects.select_for_update().get(pk=conversation.pk)
        conv.needs_human = True
        conv.priority = _raise_priority(conv)
        conv.metadata = {**conv.metadata, "needs_human": True, "needs_human_reason": "no_relevant_knowledge"}
        conv.save(update_fields=["needs_human", "priority", "metadata", "updated_at"])
        answer = _message_add(
            conversation=conv,
            role=Message.Role.ASSISTANT,
            content=text,
            parent=user_message,
            metadata={
                "state": "complete",
                "answered": False,
                "confidence": 0.0,
                "provider": "none",
                "retrieval": {"mode": "hybrid", "standalone_question": standalone},
                "latency": {**timing, "total_ms": round((time.perf_counter() - started) * 1000, 1)},
            },
        )
        audit_log_record(
            actor=None,
            action="conversation.needs_human",
            resource_type="conversation",
            resource_id=conv.pk,
            new_values={"reason": "no_relevant_knowledge", "priority": conv.priority},
        )
    emit({"type": events.ANSWER_SOURCES, "message_id": str(answer.pk), "sources": []})
    emit({"type": events.ANSWER_COMPLETED, "message": message_serialize(answer), "needs_human": True})
    return AnswerResult(user_message=user_message, assistant_message=answer, needs_human=True)


def _pieces(text: str):
    from apps.chat.extractive import stream_grouped

    return stream_grouped(text)


def _answer_generate(
    *,
    conversation,
    actor,
    user_message,
    question,
    standalone,
    lang,
    sources,
    history,
    emit,
    timing,
    started,
    query_vector=None,
):
    from apps.chat.llm import ChatMessage, LLMError, build_grounded_messages, citations_filter, get_chat_provider

    provider = get_chat_provider()
    parts: list[str] = []
    first_token_ms = None
    error = None
    provider_name = "extractive"
    try:
        if provider is None:
            from apps.chat.extractive import compose

            text, _cited = compose(question=question, sources=sources, question_vector=query_vector)
            for piece in _pieces(text):
                if first_token_ms is None:
                    first_token_ms = (time.perf_counter() - started) * 1000
                parts.append(piece)
                emit({"type": events.ANSWER_DELTA, "message_id": None, "delta": piece})
        else:
            provider_name = provider.name
            messages = build_grounded_messages(
                question=question,
                sources=sources,
                history=[ChatMessage(role=m.role, content=m.content) for m in history if m.role != "system"],
                language=lang,
            )
            guard = CitationStreamGuard({s["number"] for s in sources})
            for delta in provider.stream(messages):
                for piece in guard.feed(delta):
                    if first_token_ms is None:
                        first_token_ms = (time.perf_counter() - started) * 1000
                    parts.append(piece)
                    emit({"type": events.ANSWER_DELTA, "message_id": None, "delta": piece})
            tail = guard.flush()
            if tail:
                parts.append(tail)
                emit({"type": events.ANSWER_DELTA, "message_id": None, "delta": tail})
    except LLMError as exc:
        error = {"code": exc.code, "message": exc.message}
    text = "".join(parts).strip()
    clean, cited = citations_filter(text, {s["number"] for s in sources})
    cited_sources = [s for s in sources if s["number"] in cited]
    state = "complete" if error is None else "incomplete"
    if error is not None and not text:
        state = "failed"
    total_ms = (time.perf_counter() - started) * 1000
    confidence = round(max((s["similarity"] or 0) for s in sources), 4)
    with transaction.atomic():
        answer = _message_add(
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            content=clean if state == "complete" else (clean + ("\n\n" if clean else "") + INCOMPLETE_NOTE[lang]),
            parent=user_message,
            metadata={
                "state": state,
                "answered": state == "complete",
                "confidence": confidence,
                "provider": provider_name,
                "model": provider_name,
                "error": error,
                "retrieval": {"mode": "hybrid", "standalone_question": standalone, "candidates": len(sources)},
                "latency": {
                    **timing,
                    "first_token_ms": round(first_token_ms, 1) if first_token_ms is not None else None,
                    "total_ms": round(total_ms, 1),
                },
            },
        )
        MessageSource.objects.bulk_create(
            [
                MessageSource(
                    message=answer,
                    document_id=s["document_id"],
                    chunk_id=s["chunk_id"],
                    similarity_score=s["similarity"] or 0.0,
                    rank_position=s["rank"],
                    metadata={
                        "number": s["number"],
                        "title": s["title"],
                        "page": s["page"],
                        "section": s["section"],
                        "quote": s["text"][:2000],
                        "file_type": s["file_type"],
                    },
                )
                for s in cited_sources
            ]
        )
        from apps.billing.services import usage_record

        usage_record(
            usage_type="tokens",
            quantity=(user_message.token_count or 0) + (answer.token_count or 0),
            unit="tokens",
            user_id=getattr(actor, "pk", None) if hasattr(actor, "email") else None,
            metadata={"message_id": str(answer.pk), "provider": provider_name},
        )
    public_sources = [
        {
            "number": s["number"],
            "document_id": s["document_id"],
            "chunk_id": s["chunk_id"],
            "title": s["title"],
            "page": s["page"],
            "section": s["section"],
            "quote": s["text"],
            "similarity": s["similarity"],
            "rank": s["rank"],
            "file_type": s["file_type"],
        }
        for s in cited_sources
    ]
    emit({"type": events.ANSWER_SOURCES, "message_id": str(answer.pk), "sources": public_sources})
    if error is not None:
        emit({"type": events.ERROR, "code": error["code"], "message": error["message"], "message_id": str(answer.pk)})
    else:
        emit({"type": events.ANSWER_COMPLETED, "message": message_serialize(answer), "needs_human": False})
    return AnswerResult(
        user_message=user_message, assistant_message=answer, needs_human=False, sources=public_sources, error=error
    )


class CitationStreamGuard:
    """Streams an LLM's text but holds back an unfinished ``[..`` / ``【..`` until it closes,
    so a citation to a source that does not exist is dropped before anyone sees it."""

    def __init__(self, valid: set[int]):
        self.valid = valid
        self.buffer = ""

    def feed(self, delta: str):
        from apps.chat.llm import citations_filter

        self.buffer += delta
        cut = max(self.buffer.rfind("["), self.buffer.rfind("【"))
        if cut != -1 and "]" not in self.buffer[cut:] and "】" not in self.buffer[cut:] and len(self.buffer) - cut < 24:
            # The space before the marker waits with it: a dropped citation takes its space along.
            cut = len(self.buffer[:cut].rstrip(" \t"))
            ready, self.buffer = self.buffer[:cut], self.buffer[cut:]
        else:
            ready, self.buffer = self.buffer, ""
        if ready:
            clean, _ = citations_filter(ready, self.valid)
            if clean:
                yield clean

    def flush(self) -> str:
        from apps.chat.llm import citations_filter

        clean, _ = citations_filter(self.buffer, self.valid)
        self.buffer = ""
        return clean
