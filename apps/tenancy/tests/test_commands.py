from io import StringIO

from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django_tenants.utils import schema_context

from apps.accounts.models import User
from apps.tenancy.models import Tenant


def test_platform_migrate_is_idempotent_and_keeps_the_template_current(db):
    out = StringIO()

    call_command("platform_migrate", stdout=out)

    assert "All schemas migrated." in out.getvalue()
    with schema_context(settings.TENANT_BASE_SCHEMA):
        template = set(MigrationRecorder(connection).applied_migrations())
    with schema_context("acme"):
        assert set(MigrationRecorder(connection).applied_migrations()) == template
    assert connection.schema_name == "public"


def test_demo_bootstrap_creates_the_demo_and_is_idempotent(db):
    for _ in range(2):
        out = StringIO()
        call_command("demo_bootstrap", password="Demo-Pass-2026!", stdout=out)
        assert "Zhida is ready." in out.getvalue()

    demo = Tenant.objects.get(schema_name="demo")
    assert demo.get_primary_domain().domain == "demo.localhost"
    with schema_context("demo"):
        users = {u.email: sorted(u.user_roles.values_list("role__name", flat=True)) for u in User.objects.all()}
    assert users == {
        "admin@demo.localhost": ["tenant_admin"],
        "km@demo.localhost": ["knowledge_manager"],
        "agent@demo.localhost": ["agent"],
    }
    with schema_context("public"):
        operator = User.objects.get(email="admin@zhida.local")
        assert operator.check_password("Demo-Pass-2026!")
        assert list(operator.user_roles.values_list("role__name", flat=True)) == ["super_admin"]
