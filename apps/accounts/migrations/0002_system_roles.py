from django.db import migrations

SYSTEM_ROLES = [
    ("super_admin", "超级管理员", "系统超级管理员", ["*"]),
    ("tenant_admin", "租户管理员", "租户管理员", ["tenant:*"]),
    ("knowledge_manager", "知识管理员", "知识库管理员", ["docs:*", "conversations:read"]),
    ("agent", "客服座席", "客服座席", ["conversations:*", "tools:execute"]),
    ("user", "普通用户", "普通用户", ["conversations:create", "conversations:read"]),
]


def create_roles(apps, schema_editor):
    Role = apps.get_model("accounts", "Role")
    for name, display_name, description, permissions in SYSTEM_ROLES:
        Role.objects.update_or_create(
            name=name,
            defaults={
                "display_name": display_name,
                "description": description,
                "permissions": permissions,
                "is_system": True,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
