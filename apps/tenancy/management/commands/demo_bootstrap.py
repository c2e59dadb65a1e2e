from django.conf import settings
from django.core.management.base import BaseCommand
from django_tenants.utils import schema_context

from apps.tenancy.models import Tenant

DEMO_PASSWORD = "zhida-demo-2026"


class Command(BaseCommand):
    help = "Create (idempotently) the platform operator and the demo tenant with one user per role."

    def add_arguments(self, parser):
        parser.add_argument("--password", default=DEMO_PASSWORD)
        parser.add_argument("--port", default="8000")

    def handle(self, *args, **options):
        from apps.accounts.models import User
        from apps.accounts.services import user_create
        from apps.tenancy.services import public_tenant_ensure, tenant_create

        password = options["password"]
        public_tenant_ensure()
        with schema_context("public"):
            if not User.objects.filter(email__iexact="admin@zhida.local").exists():
                user_create(email="admin@zhida.local", password=password, roles=["super_admin"], email_verified=True)

        tenant = Tenant.objects.filter(schema_name="demo").first()
        if tenant is None:
            tenant = tenant_create(
                name="Demo 演示公司", schema_name="demo", domain=f"demo.{settings.TENANT_DOMAIN_SUFFIX}"
            )
        users = [
            ("admin@demo.localhost", "tenant_admin", "Demo", "Admin"),
            ("km@demo.localhost", "knowledge_manager", "Kim", "Manager"),
            ("agent@demo.localhost", "agent", "Ada", "Agent"),
        ]
        with schema_context(tenant.schema_name):
            for email, role, first, last in users:
                if not User.objects.filter(email__iexact=email).exists():
                    user_create(
                        email=email,
                        password=password,
                        roles=[role],
                        first_name=first,
                        last_name=last,
                        email_verified=True,
                    )
        documents = self._demo_documents(tenant)
        port = options["port"]
        domain = tenant.get_primary_domain().domain
        self.stdout.write(
            self.style.SUCCESS("\nZhida is ready.\n")
            + f"  Platform admin:  http://{settings.PUBLIC_DOMAIN}:{port}/admin/   admin@zhida.local / {password}\n"
            + f"  Demo workspace:  http://{domain}:{port}/admin/\n"
            + f"      tenant admin       admin@demo.localhost / {password}\n"
            + f"      knowledge manager  km@demo.localhost / {password}\n"
            + f"      agent              agent@demo.localhost / {password}\n"
            + f"  API docs:        http://{domain}:{port}/api/docs/\n"
            + f"  Health:          http://{domain}:{port}/healthz\n"
            + f"  Sample documents ({documents} queued or indexed): http://{domain}:{port}/admin/knowledge/document/\n"
        )

    def _demo_documents(self, tenant) -> int:
        """Upload the bundled sample documents (idempotent: same bytes are recognised as
        duplicates); the Celery worker indexes them."""
        from pathlib import Path

        from django.core.files import File

        from apps.knowledge.services import document_upload

        folder = Path(__file__).resolve().parents[3] / "knowledge" / "demo_documents"
        count = 0
        with schema_context(tenant.schema_name):
            for path in sorted(folder.iterdir()):
                with path.open("rb") as handle:
                    document_upload(
                        actor=None, file=File(handle, name=path.name), original_name=path.name, category="demo"
                    )
                count += 1
        return count
