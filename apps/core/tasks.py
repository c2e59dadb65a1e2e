from celery import shared_task
from django.db import connection
from tenant_schemas_celery.task import TenantTask


@shared_task(base=TenantTask, bind=True, name="core.tenant_ping")
def tenant_ping(self) -> dict:
    """Proves the tenant travels with a task: returns the schema the worker ran in and what
    it sees there (the tenant's own roles and users)."""
    from apps.accounts.models import Role, User

    return {
        "schema": connection.schema_name,
        "roles": Role.objects.count(),
        "users": sorted(User.objects.values_list("email", flat=True)),
    }
