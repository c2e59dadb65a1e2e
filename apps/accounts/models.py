"""Users, roles and API keys (seed: users, roles, user_roles). They live in every tenant
schema, so an email is unique per tenant by construction; the public schema holds the
platform operators.

Departures from the seed: no tenant_id column (the schema is the tenant); email uniqueness
is case-insensitive (UNIQUE(lower(email))) because people type their address in any case;
``last_login_at`` is Django's ``last_login``; API keys (not in the seed) are added for
machine clients."""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models.functions import Lower
from django.utils.translation import gettext_lazy as _

from apps.core.models import TimeStampedModel, UUIDModel


class UserManager(BaseUserManager):
    use_in_migrations = True

    def get_by_natural_key(self, username: str) -> User:
        return self.get(email__iexact=username)

    def create_user(self, email: str, password: str | None = None, **extra) -> User:
        from apps.accounts.services import user_create

        return user_create(email=email, password=password, actor=None, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra) -> User:
        from apps.accounts.services import user_create

        return user_create(email=email, password=password, roles=["super_admin"], actor=None, **extra)


class User(AbstractBaseUser, TimeStampedModel):
    class Status(models.TextChoices):
        ACTIVE = "active", _("Active")
        INACTIVE = "inactive", _("Inactive")
        SUSPENDED = "suspended", _("Suspended")

    email = models.EmailField(_("email"), max_length=255)
    password = models.CharField(_("password"), max_length=255, blank=True)
    first_name = models.CharField(_("first name"), max_length=100, blank=True)
    last_name = models.CharField(_("last name"), max_length=100, blank=True)
    avatar_url = models.URLField(_("avatar URL"), max_length=500, blank=True)
    status = models.CharField(_("status"), max_length=20, choices=Status.choices, default=Status.ACTIVE)
    email_verified = models.BooleanField(_("email verified"), default=False)
    sso_enabled = models.BooleanField(_("SSO enabled"), default=False)
    sso_provider = models.CharField(_("SSO provider"), max_length=50, blank=True)
    sso_subject = models.CharField(_("SSO subject"), max_length=255, blank=True)
    preferences = models.JSONField(_("preferences"), default=dict, blank=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    permission_resource = "users"

    class Meta:
        verbose_name = _("user")
        verbose_name_plural = _("users")
        ordering = ["email"]
        constraints = [
            models.UniqueConstraint(Lower("email"), name="users_email_unique_ci"),
            models.CheckConstraint(
                condition=models.Q(status__in=["active", "inactive", "suspended"]), name="users_status_valid"
            ),
        ]
        indexes = [models.Index(fields=["sso_provider", "sso_subject"], name="idx_users_sso")]

    def __str__(self) -> str:
        return self.email

    # --- what Django's auth and admin ask of a user; the answers come from the roles -------
    @property
    def is_active(self) -> bool:  # login, sessions and tokens all refuse non-active users
        return self.status == self.Status.ACTIVE

    @property
    def is_staff(self) -> bool:
        from apps.accounts.permissions import user_has_admin_access

        return user_has_admin_access(self)

    @property
    def is_superuser(self) -> bool:
        from apps.accounts.permissions import user_has_permission

        return user_has_permission(self, "platform:admin")

    def has_perm(self, perm: str, obj=None) -> bool:
        from apps.accounts.permissions import user_has_django_perm

        return user_has_django_perm(self, perm)

    def has_perms(self, perm_list, obj=None) -> bool:
        return all(self.has_perm(p, obj) for p in perm_list)

    def has_module_perms(self, app_label: str) -> bool:
        from apps.accounts.permissions import user_has_module_access

        return user_has_module_access(self, app_label)

    def get_full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip() or self.email

    def get_short_name(self) -> str:
        return self.first_name or self.email


class Role(UUIDModel):
    name = models.CharField(_("name"), max_length=50, unique=True)
    display_name = models.CharField(_("display name"), max_length=100)
    description = models.TextField(_("description"), blank=True)
    permissions = ArrayField(models.CharField(max_length=100), default=list, blank=True, verbose_name=_("permissions"))
    is_system = models.BooleanField(_("system role"), default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    permission_resource = "roles"

    class Meta:
        verbose_name = _("role")
        verbose_name_plural = _("roles")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.display_name or self.name


class UserRole(UUIDModel):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="user_roles")
    role = models.ForeignKey(Role, on_delete=models.CASCADE, related_name="user_roles")
    granted_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    granted_at = models.DateTimeField(auto_now_add=True)

    permission_resource = "roles"

    class Meta:
        verbose_name = _("role grant")
        verbose_name_plural = _("role grants")
        constraints = [models.UniqueConstraint(fields=["user", "role"], name="user_roles_unique")]

    def __str__(self) -> str:
        return f"{self.user} → {self.role.name}"


class ApiKey(TimeStampedModel):
    """A machine client's credential. The secret is shown once at creation; only its
    SHA-256 is stored (keys are 256-bit random, so a slow hash buys nothing and would cost
    every request). ``prefix`` is the public, indexed lookup part."""

    name = models.CharField(_("name"), max_length=100)
    prefix = models.CharField(_("prefix"), max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    roles = models.ManyToManyField(Role, related_name="api_keys", verbose_name=_("roles"))
    created_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="api_keys")
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    permission_resource = "apikeys"

    class Meta:
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
