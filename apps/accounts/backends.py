from django.contrib.auth.backends import ModelBackend


class EmailBackend(ModelBackend):
    """Email + password login in the current tenant's schema. Inactive and suspended users
    cannot log in (``user_can_authenticate`` reads ``is_active``, which is ``status ==
    active``). Permissions come from roles (``User.has_perm``), not from Django's tables."""

    def get_user_permissions(self, user_obj, obj=None):
        return set()

    def get_group_permissions(self, user_obj, obj=None):
        return set()

    def get_all_permissions(self, user_obj, obj=None):
        return set()

    def has_perm(self, user_obj, perm, obj=None):
        return False
