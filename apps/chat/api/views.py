"""Conversations API: CRUD with filters, messages, asking (JSON or Server-Sent Events),
close/reopen/archive and answer feedback. Views validate, check permission and call
services/selectors."""

from __future__ import annotations

import json
import queue
import threading

from django.db import close_old_connections, connection
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_tenants.utils import schema_context
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.api.views import PaginatedAPIView, _paginate
from apps.chat import events, selectors, services
from apps.chat.api import serializers as s
from apps.core.api import HasAnyPermission, HasPermission
from apps.core.exceptions import ApplicationError, NotFound, ValidationFailed

CONVERSATION_ACCESS = HasAnyPermission.of("conversations:read", "conversations:create")
# Changing a conversation (its fields, its status) takes more than reading it.
CONVERSATION_CHANGE = HasAnyPermission.of("conversations:create", "conversations:manage")


def _conversation_or_404(request, conversation_id):
    conversation = selectors.conversation_get(conversation_id=conversation_id)
    if conversation is None or not selectors.conversation_may_access(actor=request.user, conversation=conversation):
        raise NotFound("Conversation not found.", code="conversation_not_found")
    return conversation


def _bool(value):
    return None if value is None else value.lower() in ("1", "true", "yes")


class ConversationListCreateView(PaginatedAPIView):
    permission_classes = [CONVERSATION_ACCESS]

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str),
            OpenApiParameter("priority", str),
            OpenApiParameter("tags", str, description="comma-separated, any of"),
            OpenApiParameter("needs_human", bool),
            OpenApiParameter("created_after", str, description="ISO 8601"),
            OpenApiParameter("created_before", str, description="ISO 8601"),
            OpenApiParameter("search", str),
            OpenApiParameter("mine", bool),
        ],
        responses=s.ConversationOutputSerializer(many=True),
    )
    def get(self, request):
        q = request.query_params
        dates = {}
        for name in ("created_after", "created_before"):
            if q.get(name):
                value = parse_datetime(q[name])
                if value is None:
                    raise ValidationFailed("Dates are ISO 8601.", details={name: q[name]})
                dates[name] = timezone.make_aware(value) if timezone.is_naive(value) else value  # in TIME_ZONE
        qs = selectors.conversation_list(
            actor=request.user,
            status=q.get("status"),
            priority=q.get("priority"),
            tags=[t for t in (q.get("tags") or "").split(",") if t] or None,
            needs_human=_bool(q.get("needs_human")),
            search=q.get("search"),
            mine_only=bool(_bool(q.get("mine"))),
            **dates,
        )
        return _paginate(self, request, qs, s.ConversationOutputSerializer)

    @extend_schema(request=s.ConversationCreateSerializer, responses={201: s.ConversationOutputSerializer})
    def post(self, request):
        if not HasPermission.of("conversations:create")().has_permission(request, self):
            self.permission_denied(request)
        data = s.ConversationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = services.conversation_create(actor=request.user, **data.validated_data)
        return Response(s.ConversationOutputSerializer(conversation).data, status=status.HTTP_201_CREATED)


class ConversationDetailView(APIView):
    permission_classes = [CONVERSATION_ACCESS]

    @extend_schema(responses=s.ConversationOutputSerializer)
    def get(self, request, conversation_id):
        return Response(s.ConversationOutputSerializer(_conversation_or_404(request, conversation_id)).data)

    @extend_schema(request=s.ConversationUpdateSerializer, responses=s.ConversationOutputSerializer)
    def patch(self, request, conversation_id):
        conversation = _conversation_or_404(request, conversation_id)
        if not CONVERSATION_CHANGE().has_permission(request, self):
            self.permission_denied(request)
        data = s.ConversationUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        conversation = services.conversation_update(
            conversation=conversation, actor=request.user, **data.validated_data
        )
        return Response(s.ConversationOutputSerializer(conversation).data)


class ConversationTransitionView(APIView):
    permission_classes = [CONVERSATION_ACCESS]

    @extend_schema(request=None, responses=s.ConversationOutputSerializer)
    def post(self, request, conversation_id, action):
        conversation = _conversation_or_404(request, conversation_id)
        if not CONVERSATION_CHANGE().has_permission(request, self):
            self.permission_denied(request)
        conversation = services.conversation_transition(conversation=conversation, actor=request.user, action=action)
        return Response(s.ConversationOutputSerializer(conversation).data)


def _sse(event: dict) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False, default=str)}\n\n"


class ConversationMessagesView(PaginatedAPIView):
    permission_classes = [CONVERSATION_ACCESS]

    def perform_content_negotiation(self, request, force=False):
        # ``Accept: text/event-stream`` asks for the stream, which is no DRF renderer's
        # output: let it through (to JSON, for errors raised before the stream starts).
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(responses=s.MessageOutputSerializer(many=True))
    def get(self, request, conversation_id):
        conversation = _conversation_or_404(request, conversation_id)
        return _paginate(
            self, request, selectors.conversation_messages(conversation=conversation), s.MessageOutputSerializer
        )

    @extend_schema(
        request=s.AskSerializer,
        responses={200: s.AskOutputSerializer},
        description="Ask a question. With `stream: true` (or `Accept: text/event-stream`) the answer streams as "
        "Server-Sent Events (`message.created`, `answer.delta`, `answer.sources`, `answer.completed` or `error`; "
        "see apps/chat/events.py); otherwise the full answer comes back as JSON.",
    )
    def post(self, request, conversation_id):
        if not HasPermission.of("conversations:create")().has_permission(request, self):
            self.permission_denied(request)
        conversation = _conversation_or_404(request, conversation_id)
        data = s.AskSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        question = data.validated_data["content"]
        wants_stream = data.validated_data["stream"] or "text/event-stream" in request.META.get("HTTP_ACCEPT", "")
        if wants_stream:
            return self._stream(request, conversation, question)
        result = services.conversation_ask(conversation=conversation, actor=request.user, question=question)
        messages = {
            m.pk: m
            for m in selectors.conversation_messages(conversation=conversation).filter(
                pk__in=[result.user_message.pk, getattr(result.assistant_message, "pk", None)]
            )
        }
        body = {
            "question": s.MessageOutputSerializer(messages[result.user_message.pk]).data,
            "answer": s.MessageOutputSerializer(messages[result.assistant_message.pk]).data
            if result.assistant_message
            else None,
            "needs_human": result.needs_human,
            "error": result.error,
        }
        return Response(body, status=status.HTTP_200_OK)

    def _stream(self, request, conversation, question):
        # Validate up front so a bad question (or a closed conversation) is a normal JSON
        # 400/409, not a broken stream.
        services.question_validate(conversation=conversation, question=question)
        schema = connection.schema_name
        events_queue: queue.Queue = queue.Queue()
        done = object()
        user = request.user

        def work():
            try:
                with schema_context(schema):
                    services.conversation_ask(
                        conversation=conversation, actor=user, question=question, emit=events_queue.put
                    )
            except ApplicationError as exc:
                events_queue.put({"type": events.ERROR, "code": exc.code, "message": exc.message, "message_id": None})
            except Exception:  # noqa: BLE001 - the stream reports, the worker thread never dies silently
                events_queue.put(
                    {
                        "type": events.ERROR,
                        "code": "internal_error",
                        "message": "The answer failed.",
                        "message_id": None,
                    }
                )
            finally:
                close_old_connections()
                events_queue.put(done)

        threading.Thread(target=work, daemon=True, name="sse-answer").start()

        def stream():
            while True:
                event = events_queue.get()
                if event is done:
                    return
                yield _sse(event)

        response = StreamingHttpResponse(stream(), content_type="text/event-stream; charset=utf-8")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response


class MessageFeedbackView(APIView):
    permission_classes = [CONVERSATION_ACCESS]

    @extend_schema(request=s.FeedbackSerializer, responses={201: None})
    def post(self, request, message_id):
        message = selectors.message_get(message_id=message_id)
        if message is None or not selectors.conversation_may_access(
            actor=request.user, conversation=message.conversation
        ):
            raise NotFound("Message not found.", code="message_not_found")
        data = s.FeedbackSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        feedback = services.message_feedback_set(message=message, actor=request.user, **data.validated_data)
        return Response(
            {"message": str(message.pk), "rating": feedback.rating, "comment": feedback.comment},
            status=status.HTTP_201_CREATED,
        )
