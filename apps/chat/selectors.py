from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, Q, QuerySet

from apps.chat.models import Conversation, Message, MessageSource


def conversation_list(
    *,
    actor: Any,
    status: str | None = None,
    priority: str | None = None,
    tags: list[str] | None = None,
    needs_human: bool | None = None,
    created_after=None,
    created_before=None,
    search: str | None = None,
    mine_only: bool = False,
) -> QuerySet[Conversation]:
    """Conversations the actor may see (see ``conversation_may_access``); ``mine_only``
    narrows a manager's view to their own."""
    qs = Conversation.objects.all()
    if mine_only or not _sees_all(actor):
        qs = qs.filter(created_by_label=_label(actor))
    if status:
        qs = qs.filter(status=status)
    if priority:
        qs = qs.filter(priority=priority)
    if tags:
        qs = qs.filter(tags__overlap=tags)
    if needs_human is not None:
        qs = qs.filter(needs_human=needs_human)
    if created_after:
        qs = qs.filter(created_at__gte=created_after)
    if created_before:
        qs = qs.filter(created_at__lt=created_before)
    if search:
        qs = qs.filter(Q(title__icontains=search) | Q(messages__content__icontains=search)).distinct()
    return qs.order_by("-last_message_at", "-created_at")


def _label(actor: Any) -> str:
    from apps.audit.services import actor_describe

    return actor_describe(actor)[1]


def conversation_get(*, conversation_id) -> Conversation | None:
    return Conversation.objects.filter(pk=conversation_id).first()


def conversation_messages(*, conversation: Conversation) -> QuerySet[Message]:
    return (
        Message.objects.filter(conversation=conversation)
        .prefetch_related(Prefetch("sources", queryset=MessageSource.objects.order_by("rank_position")))
        .order_by("created_at")
    )


def message_get(*, message_id) -> Message | None:
    return Message.objects.select_related("conversation").filter(pk=message_id).first()


def _sees_all(actor: Any) -> bool:
    from apps.accounts.permissions import user_has_permission

    return user_has_permission(actor, "conversations:manage")


def conversation_may_access(*, actor: Any, conversation: Conversation) -> bool:
    """Who may open a conversation (read it, ask in it, change it):
    * ``conversations:manage`` — agents (``conversations:*``) and admins — the whole tenant's
      queue, so a second agent can pick up any conversation;
    * anyone else with a conversations permission — only the conversations they started."""
    from apps.accounts.permissions import user_has_permission

    if _sees_all(actor):
        return True
    return conversation.created_by_label == _label(actor) and (
        user_has_permission(actor, "conversations:create") or user_has_permission(actor, "conversations:read")
    )
