"""The URLconf the OpenAPI schema is generated from: the API only."""

from django.urls import include, path

urlpatterns = [path("api/v1/", include("config.api_router"))]
