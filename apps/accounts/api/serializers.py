from rest_framework import serializers

from apps.accounts.models import ApiKey, Role, User


class RoleOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Role
        fields = ["id", "name", "display_name", "description", "permissions", "is_system", "created_at"]


class RoleInputSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=50)
    display_name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    permissions = serializers.ListField(child=serializers.CharField(max_length=100), allow_empty=True)


class RoleUpdateSerializer(serializers.Serializer):
    display_name = serializers.CharField(max_length=100, required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    permissions = serializers.ListField(child=serializers.CharField(max_length=100), required=False)


class UserOutputSerializer(serializers.ModelSerializer):
    roles = serializers.SerializerMethodField()

    class Meta:
        model = User
        fields = [
            "id",
            "email",
            "first_name",
            "last_name",
            "avatar_url",
            "status",
            "email_verified",
            "sso_enabled",
            "sso_provider",
            "last_login",
            "preferences",
            "roles",
            "created_at",
            "updated_at",
        ]

    def get_roles(self, obj: User) -> list[str]:
        return sorted(ur.role.name for ur in obj.user_roles.all())


class MeOutputSerializer(UserOutputSerializer):
    permissions = serializers.SerializerMethodField()
    tenant = serializers.SerializerMethodField()

    class Meta(UserOutputSerializer.Meta):
        fields = [*UserOutputSerializer.Meta.fields, "permissions", "tenant"]

    def get_permissions(self, obj: User) -> list[str]:
        from apps.accounts.permissions import principal_permissions

        return sorted(principal_permissions(obj))

    def get_tenant(self, obj: User) -> dict:
        tenant = self.context["request"].tenant
        return {"id": str(tenant.pk), "name": tenant.name, "schema": tenant.schema_name}


class MeUpdateSerializer(serializers.Serializer):
    first_name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    last_name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    avatar_url = serializers.URLField(max_length=500, required=False, allow_blank=True)
    preferences = serializers.JSONField(required=False)


class UserCreateSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=255)
    first_name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    last_name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    roles = serializers.ListField(child=serializers.CharField(max_length=50), default=list)
    password = serializers.CharField(required=False, write_only=True, help_text="Omit to send an invitation instead.")


class UserCreateOutputSerializer(UserOutputSerializer):
    invitation_token = serializers.CharField(read_only=True, required=False)

    class Meta(UserOutputSerializer.Meta):
        fields = [*UserOutputSerializer.Meta.fields, "invitation_token"]


class RoleGrantSerializer(serializers.Serializer):
    role = serializers.CharField(max_length=50)


class LoginSerializer(serializers.Serializer):
    email = serializers.EmailField()
    password = serializers.CharField(trim_whitespace=False)


class TokenOutputSerializer(serializers.Serializer):
    token = serializers.CharField()
    expiry = serializers.DateTimeField(allow_null=True)
    user = UserOutputSerializer()


class InvitationAcceptSerializer(serializers.Serializer):
    token = serializers.CharField()
    password = serializers.CharField(trim_whitespace=False)


class ApiKeyOutputSerializer(serializers.ModelSerializer):
    roles = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="email", read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "roles",
            "created_by",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
        ]


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    roles = serializers.ListField(child=serializers.CharField(max_length=50), min_length=1)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class ApiKeyCreatedSerializer(ApiKeyOutputSerializer):
    key = serializers.CharField(read_only=True, help_text="The secret. Shown once; store it now.")

    class Meta(ApiKeyOutputSerializer.Meta):
        fields = [*ApiKeyOutputSerializer.Meta.fields, "key"]
