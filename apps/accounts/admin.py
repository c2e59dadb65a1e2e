"""Admin for users, roles and API keys, on both the platform and tenant sites. Every write
goes through the services (audit included); the admin only builds forms."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.utils.translation import gettext_lazy as _

from apps.accounts import services
from apps.accounts.models import ApiKey, Role, User, UserRole
from apps.core.admin_sites import platform_admin_site, tenant_admin_site
from apps.core.exceptions import ApplicationError


class UserAddForm(forms.ModelForm):
    password = forms.CharField(
        label=_("password"), widget=forms.PasswordInput, required=False, help_text=_("Leave empty to invite.")
    )
    roles = forms.ModelMultipleChoiceField(queryset=Role.objects.all(), required=False, label=_("roles"))

    class Meta:
        model = User
        fields = ["email", "first_name", "last_name"]


class UserChangeForm(forms.ModelForm):
    roles = forms.ModelMultipleChoiceField(queryset=Role.objects.all(), required=False, label=_("roles"))

    class Meta:
        model = User
        fields = ["first_name", "last_name", "avatar_url", "status", "preferences"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["roles"].initial = Role.objects.filter(user_roles__user=self.instance)


class UserRoleInline(admin.TabularInline):
    model = UserRole
    fk_name = "user"
    extra = 0
    readonly_fields = ["role", "granted_by", "granted_at"]
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


STATUS_SERVICES = {
    User.Status.ACTIVE: services.user_reactivate,
    User.Status.INACTIVE: services.user_deactivate,
    User.Status.SUSPENDED: services.user_suspend,
}


class ServiceErrorsAsMessages:
    """A service that refuses (``ApplicationError`` from ``save_model``) undoes the whole
    save — ``changeform_view`` runs it in one transaction — and comes back as an error
    message on the same page. Catching it inside ``save_model`` instead would let the admin
    carry on: report "added successfully" for an object that was never created, log it,
    and keep the parts of a change that ran before the refusal."""

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ApplicationError as exc:
            self.message_user(request, exc.message, level=messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


class UserAdmin(ServiceErrorsAsMessages, admin.ModelAdmin):
    list_display = ["email", "first_name", "last_name", "status", "email_verified", "last_login", "created_at"]
    list_filter = ["status", "email_verified", "sso_enabled", "user_roles__role"]
    search_fields = ["email", "first_name", "last_name"]
    ordering = ["email"]
    readonly_fields = ["email", "email_verified", "sso_enabled", "sso_provider", "last_login", "created_at"]
    inlines = [UserRoleInline]
    actions = ["deactivate_users", "reactivate_users"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = UserChangeForm if obj else UserAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [(None, {"fields": ["email", "first_name", "last_name", "password", "roles"]})]
        return [
            (None, {"fields": ["email", "first_name", "last_name", "avatar_url", "status", "roles"]}),
            (
                _("Details"),
                {
                    "fields": [
                        "email_verified",
                        "sso_enabled",
                        "sso_provider",
                        "last_login",
                        "created_at",
                        "preferences",
                    ]
                },
            ),
        ]

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def get_inlines(self, request, obj):
        return self.inlines if obj else []

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if not change:
            created = services.user_create(
                email=data["email"],
                password=data.get("password") or None,
                first_name=data.get("first_name", ""),
                last_name=data.get("last_name", ""),
                roles=[r.name for r in data.get("roles", [])],
                actor=request.user,
            )
            obj.pk = created.pk
            return
        user = User.objects.get(pk=obj.pk)
        services.user_update(
            user=user,
            actor=request.user,
            first_name=data["first_name"],
            last_name=data["last_name"],
            avatar_url=data["avatar_url"],
            preferences=data["preferences"],
        )
        if data["status"] != user.status:
            STATUS_SERVICES[data["status"]](user=user, actor=request.user)
        wanted = {r.name for r in data.get("roles", [])}
        held = set(UserRole.objects.filter(user=user).values_list("role__name", flat=True))
        for name in sorted(wanted - held):
            services.user_role_grant(user=user, role_name=name, actor=request.user)
        for name in sorted(held - wanted):
            services.user_role_revoke(user=user, role_name=name, actor=request.user)

    def save_related(self, request, form, formsets, change):
        """Roles are saved by ``save_model`` through the services; the role inline only
        shows them, so none of it is saved. The admin's change message still reads what a
        formset save sets, hence the empty lists (without them every change page crashed)."""
        for formset in formsets:
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []

    def delete_model(self, request, obj):
        services.user_deactivate(user=obj, actor=request.user)

    @admin.action(description=_("Deactivate selected users"), permissions=["change"])
    def deactivate_users(self, request, queryset):
        for user in queryset:
            try:
                services.user_deactivate(user=user, actor=request.user)
            except ApplicationError as exc:
                self.message_user(request, f"{user}: {exc.message}", level=messages.ERROR)

    @admin.action(description=_("Reactivate selected users"), permissions=["change"])
    def reactivate_users(self, request, queryset):
        for user in queryset:
            services.user_reactivate(user=user, actor=request.user)

    def has_delete_permission(self, request, obj=None):
        return False  # users are deactivated, never deleted (their history stays attributable)


class RoleAdmin(ServiceErrorsAsMessages, admin.ModelAdmin):
    list_display = ["name", "display_name", "permissions", "is_system"]
    list_filter = ["is_system"]
    search_fields = ["name", "display_name"]
    fields = ["name", "display_name", "description", "permissions", "is_system"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ["is_system"]
        if obj.is_system:
            return ["name", "permissions", "is_system"]
        return ["name", "is_system"]

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            stored = Role.objects.get(pk=obj.pk)  # ``obj`` already holds the form's values; audit needs the old ones
            services.role_update(
                role=stored,
                actor=request.user,
                display_name=data.get("display_name"),
                description=data.get("description"),
                permissions=None if obj.is_system else data.get("permissions"),
            )
        else:
            role = services.role_create(
                name=data["name"],
                display_name=data["display_name"],
                description=data.get("description", ""),
                permissions=data.get("permissions", []),
                actor=request.user,
            )
            obj.pk = role.pk

    def delete_model(self, request, obj):
        services.role_delete(role=obj, actor=request.user)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and not (obj and obj.is_system)


class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "created_by", "created_at", "last_used_at", "expires_at", "revoked_at"]
    list_filter = ["revoked_at", "roles"]
    search_fields = ["name", "prefix"]
    readonly_fields = [
        "name",
        "prefix",
        "roles",
        "created_by",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    fields = readonly_fields
    actions = ["revoke_keys"]

    def has_add_permission(self, request):
        return False  # keys are issued through the API, which shows the secret once

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description=_("Revoke selected API keys"), permissions=["change"])
    def revoke_keys(self, request, queryset):
        for api_key in queryset:
            services.api_key_revoke(api_key=api_key, actor=request.user)


for site in (platform_admin_site, tenant_admin_site):
    site.register(User, UserAdmin)
    site.register(Role, RoleAdmin)
tenant_admin_site.register(ApiKey, ApiKeyAdmin)
