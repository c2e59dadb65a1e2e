from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "apps.core"
    label = "core"

    def ready(self) -> None:
        from apps.core import openapi  # noqa: F401 - registers the OpenAPI auth extensions
