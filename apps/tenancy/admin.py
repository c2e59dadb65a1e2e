from django import forms
from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _

from apps.core.admin_sites import platform_admin_site
from apps.core.exceptions import ApplicationError
from apps.tenancy import services
from apps.tenancy.models import Domain, SubscriptionPlan, Tenant, TenantSubscription


class DomainInline(admin.TabularInline):
    model = Domain
    extra = 0


class SubscriptionInline(admin.TabularInline):
    model = TenantSubscription
    extra = 0


class TenantAddForm(forms.ModelForm):
    domain = forms.CharField(label=_("domain"), required=False, help_text=_("Default: <key>.<TENANT_DOMAIN_SUFFIX>"))
    admin_email = forms.EmailField(label=_("first administrator's email"), required=False)
    admin_password = forms.CharField(label=_("their password"), required=False, widget=forms.PasswordInput)

    class Meta:
        model = Tenant
        fields = ["name", "schema_name"]

    def clean(self):
        cleaned = super().clean()
        if "schema_name" in cleaned:
            try:
                services.tenant_create_check(schema_name=cleaned["schema_name"], domain=cleaned.get("domain") or None)
            except ApplicationError as exc:
                self.add_error("domain" if exc.code == "domain_exists" else "schema_name", exc.message)
        return cleaned


class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "schema_name", "status", "created_at", "deleted_at"]
    list_filter = ["status"]
    search_fields = ["name", "schema_name", "domains__domain"]
    actions = ["suspend", "reactivate", "soft_delete"]

    def get_queryset(self, request):
        return super().get_queryset(request).exclude(schema_name="public")

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = TenantAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["name", "schema_name", "domain", "admin_email", "admin_password"]
        return ["name", "schema_name", "status", "settings", "created_at", "deleted_at"]

    def get_readonly_fields(self, request, obj=None):
        return ["schema_name", "status", "created_at", "deleted_at"] if obj else []

    def get_inlines(self, request, obj):
        return [DomainInline, SubscriptionInline] if obj else []

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        data = form.cleaned_data
        try:
            tenant = services.tenant_create(
                name=data["name"],
                schema_name=data["schema_name"],
                domain=data.get("domain") or None,
                actor=request.user,
                admin_email=data.get("admin_email") or None,
                admin_password=data.get("admin_password") or None,
            )
            obj.pk = tenant.pk
        except ApplicationError as exc:
            self.message_user(request, exc.message, level=messages.ERROR)

    def has_delete_permission(self, request, obj=None):
        return False  # soft delete via the action

    @admin.action(description=_("Suspend selected tenants"), permissions=["change"])
    def suspend(self, request, queryset):
        self._each(request, queryset, services.tenant_suspend)

    @admin.action(description=_("Reactivate selected tenants"), permissions=["change"])
    def reactivate(self, request, queryset):
        self._each(request, queryset, services.tenant_reactivate)

    @admin.action(description=_("Delete selected tenants (soft)"), permissions=["change"])
    def soft_delete(self, request, queryset):
        self._each(request, queryset, services.tenant_soft_delete)

    def _each(self, request, queryset, service):
        for tenant in queryset:
            try:
                service(tenant=tenant, actor=request.user)
            except ApplicationError as exc:
                self.message_user(request, f"{tenant}: {exc.message}", level=messages.ERROR)


class SubscriptionPlanAdmin(admin.ModelAdmin):
    list_display = ["name", "display_name", "is_active", "created_at"]
    list_filter = ["is_active"]


class TenantSubscriptionAdmin(admin.ModelAdmin):
    list_display = ["tenant", "plan", "status", "billing_cycle", "current_period_start", "current_period_end"]
    list_filter = ["status", "billing_cycle", "plan"]
    list_select_related = ["tenant", "plan"]


platform_admin_site.register(Tenant, TenantAdmin)
platform_admin_site.register(Domain)
platform_admin_site.register(SubscriptionPlan, SubscriptionPlanAdmin)
platform_admin_site.register(TenantSubscription, TenantSubscriptionAdmin)
