from django.core.management import call_command
from django.core.management.base import BaseCommand

from apps.tenancy.services import public_tenant_ensure, tenant_template_ensure


class Command(BaseCommand):
    help = (
        "Migrate everything in order: the public schema, the template schema new tenants are "
        "cloned from, then every tenant schema. Idempotent; run after every deploy."
    )

    def add_arguments(self, parser):
        parser.add_argument("--executor", default="standard", choices=["standard", "multiprocessing"])

    def handle(self, *args, **options):
        verbosity = options["verbosity"]
        self.stdout.write("[1/3] public schema")
        call_command("migrate_schemas", shared=True, interactive=False, verbosity=max(verbosity - 1, 0))
        public_tenant_ensure()
        self.stdout.write("[2/3] tenant template schema")
        tenant_template_ensure(verbosity=max(verbosity - 1, 0))
        self.stdout.write("[3/3] tenant schemas")
        call_command(
            "migrate_schemas",
            tenant=True,
            interactive=False,
            executor=options["executor"],
            verbosity=max(verbosity - 1, 0),
        )
        self.stdout.write(self.style.SUCCESS("All schemas migrated."))
