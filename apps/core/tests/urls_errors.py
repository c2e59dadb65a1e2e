"""Test-only URLconf: the tenant URLs plus views that fail on purpose, to prove no error
ever leaves the API as an HTML page."""

from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.http import Http404
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from config.urls import handler403, handler404, handler500
from config.urls import urlpatterns as tenant_urlpatterns


class ExplodingApiView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request):
        raise RuntimeError("boom in a DRF view")


def exploding_view(request):
    raise RuntimeError("boom in a plain Django view")


def missing_view(request):
    raise Http404("nothing here")


def forbidden_view(request):
    raise PermissionDenied


def suspicious_view(request):
    raise SuspiciousOperation("tampered input")


urlpatterns = [
    path("api/v1/test/explode", ExplodingApiView.as_view()),
    path("api/v1/test/explode-plain", exploding_view),
    path("api/v1/test/missing-plain", missing_view),
    path("api/v1/test/forbidden-plain", forbidden_view),
    path("api/v1/test/suspicious-plain", suspicious_view),
    path("test/explode-page", exploding_view),
    *tenant_urlpatterns,
]

__all__ = ["handler403", "handler404", "handler500", "urlpatterns"]
