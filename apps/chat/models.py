"""Conversations, messages and the passages each answer cites (seed: conversations,
messages, message_sources), in each tenant's schema.

Departures from the seed: no tenant_id (the schema is the tenant); ``created_by`` may be
empty for API-key clients (``created_by_label``); MessageSource keeps a snapshot of the
cited passage (quote, title, page) in ``metadata`` and its chunk/document links SET NULL, so
an answer's citations survive a document being replaced or deleted; feedback (thumbs up or
down with a comment) is its own table, one row per person per message."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.utils.translation import gettext_lazy as _

from apps.core.models import TimeStampedModel, UUIDModel


class Conversation(TimeStampedModel):
    class Status(models.TextChoices):
        ACTIVE = "active", _("Active")
        CLOSED = "closed", _("Closed")
        ARCHIVED = "archived", _("Archived")

    class Priority(models.TextChoices):
        LOW = "low", _("Low")
        NORMAL = "normal", _("Normal")
        HIGH = "high", _("High")
        URGENT = "urgent", _("Urgent")

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations"
    )
    created_by_label = models.CharField(max_length=255, blank=True)
    title = models.CharField(_("title"), max_length=500, blank=True)
    status = models.CharField(_("status"), max_length=20, choices=Status.choices, default=Status.ACTIVE)
    priority = models.CharField(_("priority"), max_length=20, choices=Priority.choices, default=Priority.NORMAL)
    category = models.CharField(_("category"), max_length=100, blank=True)
    tags = ArrayField(models.CharField(max_length=100), default=list, blank=True, verbose_name=_("tags"))
    context = models.JSONField(default=dict, blank=True, help_text="customer, department, channel…")
    metadata = models.JSONField(default=dict, blank=True)
    needs_human = models.BooleanField(_("needs a human"), default=False, db_index=True)
    message_count = models.PositiveIntegerField(default=0)
    last_message_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)

    permission_resource = "conversations"

    class Meta:
        verbose_name = _("conversation")
        verbose_name_plural = _("conversations")
        ordering = ["-last_message_at", "-created_at"]
        indexes = [
            models.Index(fields=["created_by"], name="idx_conversations_user"),
            models.Index(fields=["status"], name="idx_conversations_status"),
            GinIndex(fields=["tags"], name="idx_conversations_tags"),
            models.Index(fields=["status", "-last_message_at"], name="idx_conversations_status_last"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["active", "closed", "archived"]), name="conversations_status_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(priority__in=["low", "normal", "high", "urgent"]),
                name="conversations_priority_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.title or str(self.pk)


class Message(TimeStampedModel):
    class Role(models.TextChoices):
        USER = "user", _("User")
        ASSISTANT = "assistant", _("Assistant")
        SYSTEM = "system", _("System")

    class ContentType(models.TextChoices):
        TEXT = "text", "text"
        MARKDOWN = "markdown", "markdown"
        JSON = "json", "json"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    parent_message = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    role = models.CharField(max_length=20, choices=Role.choices)
    content = models.TextField()
    content_type = models.CharField(max_length=20, choices=ContentType.choices, default=ContentType.TEXT)
    token_count = models.PositiveIntegerField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)  # model, confidence, retrieval, latency, state

    permission_resource = "conversations"

    class Meta:
        verbose_name = _("message")
        verbose_name_plural = _("messages")
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["conversation", "created_at"], name="idx_messages_conv_created"),
            models.Index(fields=["role"], name="idx_messages_role"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(role__in=["user", "assistant", "system"]), name="messages_role_valid"
            )
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"


class MessageSource(UUIDModel):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="sources")
    document = models.ForeignKey("knowledge.Document", null=True, on_delete=models.SET_NULL, related_name="+")
    chunk = models.ForeignKey("knowledge.DocumentChunk", null=True, on_delete=models.SET_NULL, related_name="+")
    similarity_score = models.FloatField()
    rank_position = models.PositiveSmallIntegerField()
    metadata = models.JSONField(default=dict, blank=True)  # number, quote, title, page, section
    created_at = models.DateTimeField(auto_now_add=True)

    permission_resource = "conversations"

    class Meta:
        verbose_name = _("message source")
        verbose_name_plural = _("message sources")
        ordering = ["rank_position"]
        indexes = [models.Index(fields=["document"], name="idx_message_sources_document")]


class MessageFeedback(TimeStampedModel):
    class Rating(models.TextChoices):
        UP = "up", "👍"
        DOWN = "down", "👎"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    author_label = models.CharField(max_length=255)
    rating = models.CharField(max_length=4, choices=Rating.choices)
    comment = models.TextField(blank=True)

    permission_resource = "conversations"

    class Meta:
        verbose_name = _("feedback")
        verbose_name_plural = _("feedback")
        constraints = [models.UniqueConstraint(fields=["message", "author_label"], name="message_feedback_once")]
