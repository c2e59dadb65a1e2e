from django.db import migrations

PLANS = [
    (
        "starter",
        "入门版 Starter",
        "Small teams getting started.",
        {"monthly": 99.0, "annual": 990.0, "currency": "CNY"},
        {"maxUsers": 10, "maxStorage": "1GB", "maxApiCalls": 10000},
        ["api_access"],
    ),
    (
        "professional",
        "专业版 Professional",
        "Growing customer-service teams.",
        {"monthly": 999.0, "annual": 9990.0, "currency": "CNY"},
        {"maxUsers": 100, "maxStorage": "10GB", "maxApiCalls": 50000},
        ["api_access", "integrations", "advanced_analytics"],
    ),
    (
        "enterprise",
        "企业版 Enterprise",
        "Large organisations with SSO and custom limits.",
        {"monthly": 4999.0, "annual": 49990.0, "currency": "CNY"},
        {"maxUsers": 1000, "maxStorage": "100GB", "maxApiCalls": 500000},
        ["api_access", "integrations", "advanced_analytics", "sso"],
    ),
]


def create_plans(apps, schema_editor):
    if schema_editor.connection.schema_name != "public":
        return
    Plan = apps.get_model("tenancy", "SubscriptionPlan")
    for name, display_name, description, pricing, limits, features in PLANS:
        Plan.objects.get_or_create(
            name=name,
            defaults={
                "display_name": display_name,
                "description": description,
                "pricing": pricing,
                "limits": limits,
                "features": features,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("tenancy", "0001_initial")]
    operations = [migrations.RunPython(create_plans, migrations.RunPython.noop)]
