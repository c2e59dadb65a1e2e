"""The platform operator fixtures are shared with the tenancy tests (the platform audit log
is read through the platform admin)."""

from apps.tenancy.tests.conftest import platform_client, platform_operator  # noqa: F401
