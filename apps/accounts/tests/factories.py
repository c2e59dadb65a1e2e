"""Factories for accounts. They build through the services, so every object they make
has its role grants and audit row exactly as in production. Like the services, they act
on the current schema: call them inside ``schema_context(tenant.schema_name)``."""

from __future__ import annotations

import factory

from apps.accounts import services
from apps.accounts.models import Role, User

FACTORY_PASSWORD = "Factory-Pass-2026!"


class UserFactory(factory.django.DjangoModelFactory):
    """``UserFactory(roles=["agent"])``; ``password=None`` makes a user who cannot log in
    yet (as after an invitation); ``status="suspended"`` and other fields pass through."""

    class Meta:
        model = User

    email = factory.Sequence(lambda n: f"person{n}@example.test")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    password = FACTORY_PASSWORD
    roles = factory.LazyFunction(list)

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return services.user_create(actor=None, **kwargs)


class RoleFactory(factory.django.DjangoModelFactory):
    """A custom (non-system) role: ``RoleFactory(permissions=["audit:read"])``."""

    class Meta:
        model = Role

    name = factory.Sequence(lambda n: f"custom_role_{n}")
    display_name = factory.LazyAttribute(lambda o: o.name.replace("_", " ").title())
    description = ""
    permissions = factory.LazyFunction(lambda: ["docs:read"])

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return services.role_create(actor=None, **kwargs)
