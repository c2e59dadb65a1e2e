"""/api/v1/ for tenant domains: each app contributes its urls here."""

from django.urls import include, path

urlpatterns = [
    path("", include("apps.accounts.api.urls")),
    path("", include("apps.knowledge.api.urls")),
    path("", include("apps.chat.api.urls")),
]
