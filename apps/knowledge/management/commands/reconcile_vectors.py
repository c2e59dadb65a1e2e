import sys

from django.core.management.base import BaseCommand
from django_tenants.utils import schema_context

from apps.tenancy.selectors import tenant_list


def progress_bar(stream, label: str):
    def report(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / total) if total else width
        stream.write(f"\r  {label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return report


class Command(BaseCommand):
    help = "Compare PostgreSQL chunks with Milvus vectors for each tenant and repair drift."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", action="append", help="schema name (repeatable); default: all")
        parser.add_argument("--dry-run", action="store_true", help="report only, change nothing")

    def handle(self, *args, **options):
        from apps.knowledge.services import vectors_reconcile

        tenants = tenant_list().filter(status="active")
        if options["tenant"]:
            tenants = tenants.filter(schema_name__in=options["tenant"])
        total = {"restored": 0, "removed": 0}
        for tenant in tenants:
            with schema_context(tenant.schema_name):
                report = vectors_reconcile(
                    dry_run=options["dry_run"], progress=progress_bar(sys.stdout, tenant.schema_name)
                )
            verb = "would " if options["dry_run"] else ""
            self.stdout.write(
                f"{tenant.schema_name}: {report.documents_checked} documents checked, "
                f"{verb}restore {report.vectors_restored} vectors, {verb}remove {report.vectors_removed}"
                + (f", {verb}analyse {report.chunks_analysed} chunks for BM25" if report.chunks_analysed else "")
                + (f" (documents: {', '.join(report.documents_repaired)})" if report.documents_repaired else "")
            )
            total["restored"] += report.vectors_restored
            total["removed"] += report.vectors_removed
        self.stdout.write(self.style.SUCCESS(f"Done: {total['restored']} restored, {total['removed']} removed."))
