"""The agent console: a Django-served page (templates/console/, static/console/) that talks to
the conversations API and streams answers over ``ws/chat/<conversation_id>/`` (protocol:
apps/chat/events.py). These views only check who may come in and hand the page its
configuration; every read and write happens through the API and the websocket."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse, reverse_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from apps.accounts.permissions import user_has_permission
from apps.chat.models import Conversation
from apps.knowledge import selectors as knowledge_selectors
from apps.knowledge.file_response import document_file_response

LOGIN_URL = "console:login"
CONSOLE_PERMISSIONS = ("conversations:create", "conversations:read")
# Who may open a cited document: whoever may see answers (and so their citations), and
# whoever may read the knowledge base itself.
DOCUMENT_PERMISSIONS = (*CONSOLE_PERMISSIONS, "docs:read")


def _may_use_console(user: Any) -> bool:
    return any(user_has_permission(user, p) for p in CONSOLE_PERMISSIONS)


def _forbidden(request: HttpRequest) -> HttpResponse:
    return render(request, "console/forbidden.html", status=403)


class ConsoleLoginView(auth_views.LoginView):
    template_name = "console/login.html"
    redirect_authenticated_user = True
    next_page = reverse_lazy("console:app")


class ConsoleLogoutView(auth_views.LogoutView):
    next_page = reverse_lazy("console:login")


@never_cache
@require_safe
@login_required(login_url=LOGIN_URL)
def console_view(request: HttpRequest) -> HttpResponse:
    user = request.user
    if not _may_use_console(user):
        return _forbidden(request)
    placeholder = "00000000-0000-0000-0000-000000000000"
    config = {
        "api": "/api/v1/",
        "wsPath": "/ws/chat/",
        "fileUrl": reverse("console:document-file", args=[placeholder]),
        "filePlaceholder": placeholder,
        "loginUrl": reverse(LOGIN_URL),
        "user": {"id": str(user.pk), "email": user.email},
        "tenant": request.tenant.schema_name,
        "canCreate": user_has_permission(user, "conversations:create"),
        "seesAll": user_has_permission(user, "conversations:manage"),
        "statuses": [{"value": v, "label": str(label)} for v, label in Conversation.Status.choices],
        "priorities": [{"value": v, "label": str(label)} for v, label in Conversation.Priority.choices],
    }
    return render(request, "console/app.html", {"console_config": config})


@require_safe
@login_required(login_url=LOGIN_URL)
def document_file_view(request: HttpRequest, document_id) -> FileResponse | HttpResponse:
    """The original file of a cited document, inline (a PDF opens at ``#page=N``)."""
    if not any(user_has_permission(request.user, p) for p in DOCUMENT_PERMISSIONS):
        return _forbidden(request)
    document = knowledge_selectors.document_get(document_id=document_id)
    return document_file_response(document=document)
