"""The agent console on tenant domains, under ``/console/`` (views: apps/chat/console.py)."""

from django.urls import path
from django.views.i18n import JavaScriptCatalog

from apps.chat import console

app_name = "console"

urlpatterns = [
    path("", console.console_view, name="app"),
    path("login/", console.ConsoleLoginView.as_view(), name="login"),
    path("logout/", console.ConsoleLogoutView.as_view(), name="logout"),
    path("jsi18n/", JavaScriptCatalog.as_view(packages=["apps.chat"]), name="jsi18n"),
    path("documents/<uuid:document_id>/file/", console.document_file_view, name="document-file"),
]
