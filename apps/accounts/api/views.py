"""Accounts API: the current user, users and roles (tenant admins), API keys and token
login. Views only validate, check permission and call a service or selector."""

from __future__ import annotations

from django.contrib.auth import authenticate, logout
from django.contrib.auth.signals import user_logged_in
from drf_spectacular.utils import extend_schema
from knox.models import AuthToken
from rest_framework import status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import selectors, services
from apps.accounts.api import serializers as s
from apps.accounts.models import User
from apps.core.api import HasPermission
from apps.core.exceptions import ApplicationError, NotFound


def _paginate(view: APIView, request, queryset, serializer_class):
    paginator = view.paginator
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True, context={"request": request}).data)


class PaginatedAPIView(APIView):
    @property
    def paginator(self):
        from rest_framework.settings import api_settings

        if not hasattr(self, "_paginator"):
            self._paginator = api_settings.DEFAULT_PAGINATION_CLASS()
        return self._paginator


class IsPerson(IsAuthenticated):
    """Endpoints about "me" need a person, not an API key."""

    def has_permission(self, request, view) -> bool:
        return super().has_permission(request, view) and isinstance(request.user, User)


class MeView(APIView):
    permission_classes = [IsPerson]

    @extend_schema(responses=s.MeOutputSerializer)
    def get(self, request):
        user = selectors.user_get(user_id=request.user.pk)
        return Response(s.MeOutputSerializer(user, context={"request": request}).data)

    @extend_schema(request=s.MeUpdateSerializer, responses=s.MeOutputSerializer)
    def patch(self, request):
        data = s.MeUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        services.user_update(user=request.user, actor=request.user, **data.validated_data)
        user = selectors.user_get(user_id=request.user.pk)
        return Response(s.MeOutputSerializer(user, context={"request": request}).data)


class LoginView(APIView):
    """Email + password → a bearer token (``Authorization: Token <token>``)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(request=s.LoginSerializer, responses=s.TokenOutputSerializer)
    def post(self, request):
        data = s.LoginSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = authenticate(request, email=data.validated_data["email"], password=data.validated_data["password"])
        if user is None:
            raise ApplicationError("Email or password is incorrect.", code="invalid_credentials", details={})
        instance, token = AuthToken.objects.create(user)
        user_logged_in.send(sender=user.__class__, request=request, user=user)
        user = selectors.user_get(user_id=user.pk)
        return Response(
            s.TokenOutputSerializer({"token": token, "expiry": instance.expiry, "user": user}).data,
            status=status.HTTP_200_OK,
        )


class LogoutView(APIView):
    """Ends the credential the request came with: the token, or the browser session."""

    permission_classes = [IsPerson]

    @extend_schema(request=None, responses={204: None})
    def post(self, request):
        if isinstance(request.auth, AuthToken):
            request.auth.delete()
        else:
            logout(request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationAcceptView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(request=s.InvitationAcceptSerializer, responses=s.UserOutputSerializer)
    def post(self, request):
        data = s.InvitationAcceptSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_invitation_accept(**data.validated_data)
        return Response(s.UserOutputSerializer(selectors.user_get(user_id=user.pk)).data)


class UserListCreateView(PaginatedAPIView):
    permission_classes = [HasPermission.by_method({"GET": "users:read", "POST": "users:write"})]

    @extend_schema(responses=s.UserOutputSerializer(many=True))
    def get(self, request):
        qs = selectors.user_list(
            search=request.query_params.get("search"),
            status=request.query_params.get("status"),
            role=request.query_params.get("role"),
        )
        return _paginate(self, request, qs, s.UserOutputSerializer)

    @extend_schema(request=s.UserCreateSerializer, responses={201: s.UserCreateOutputSerializer})
    def post(self, request):
        data = s.UserCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        token = None
        if v.get("password"):
            user = services.user_create(
                email=v["email"],
                password=v["password"],
                first_name=v["first_name"],
                last_name=v["last_name"],
                roles=v["roles"],
                actor=request.user,
                validate=True,
            )
        else:
            invitation = services.user_invite(
                email=v["email"],
                first_name=v["first_name"],
                last_name=v["last_name"],
                roles=v["roles"],
                actor=request.user,
            )
            user, token = invitation.user, invitation.token
        out = s.UserCreateOutputSerializer(selectors.user_get(user_id=user.pk)).data
        out["invitation_token"] = token
        return Response(out, status=status.HTTP_201_CREATED)


def _user_or_404(user_id) -> User:
    user = selectors.user_get(user_id=user_id)
    if user is None:
        raise NotFound("User not found.", code="user_not_found")
    return user


class UserDetailView(APIView):
    permission_classes = [HasPermission.by_method({"GET": "users:read", "PATCH": "users:write"})]

    @extend_schema(responses=s.UserOutputSerializer)
    def get(self, request, user_id):
        return Response(s.UserOutputSerializer(_user_or_404(user_id)).data)

    @extend_schema(request=s.MeUpdateSerializer, responses=s.UserOutputSerializer)
    def patch(self, request, user_id):
        user = _user_or_404(user_id)
        data = s.MeUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        services.user_update(user=user, actor=request.user, **data.validated_data)
        return Response(s.UserOutputSerializer(_user_or_404(user_id)).data)


class UserStatusView(APIView):
    """POST /users/{id}/deactivate | /suspend | /reactivate"""

    permission_classes = [HasPermission.of("users:write")]
    actions = {
        "deactivate": services.user_deactivate,
        "suspend": services.user_suspend,
        "reactivate": services.user_reactivate,
    }

    @extend_schema(request=None, responses=s.UserOutputSerializer)
    def post(self, request, user_id, action):
        user = _user_or_404(user_id)
        self.actions[action](user=user, actor=request.user)
        return Response(s.UserOutputSerializer(_user_or_404(user_id)).data)


class UserRolesView(APIView):
    permission_classes = [HasPermission.of("roles:write")]

    @extend_schema(request=s.RoleGrantSerializer, responses={201: s.UserOutputSerializer})
    def post(self, request, user_id):
        user = _user_or_404(user_id)
        data = s.RoleGrantSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.user_role_grant(user=user, role_name=data.validated_data["role"], actor=request.user)
        return Response(s.UserOutputSerializer(_user_or_404(user_id)).data, status=status.HTTP_201_CREATED)


class UserRoleDetailView(APIView):
    permission_classes = [HasPermission.of("roles:write")]

    @extend_schema(responses={204: None})
    def delete(self, request, user_id, role_name):
        user = _user_or_404(user_id)
        services.user_role_revoke(user=user, role_name=role_name, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RoleListCreateView(APIView):
    permission_classes = [HasPermission.by_method({"GET": "roles:read", "POST": "roles:write"})]

    @extend_schema(responses=s.RoleOutputSerializer(many=True))
    def get(self, request):
        return Response(s.RoleOutputSerializer(selectors.role_list(), many=True).data)

    @extend_schema(request=s.RoleInputSerializer, responses={201: s.RoleOutputSerializer})
    def post(self, request):
        data = s.RoleInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        role = services.role_create(actor=request.user, **data.validated_data)
        return Response(s.RoleOutputSerializer(role).data, status=status.HTTP_201_CREATED)


def _role_or_404(name: str):
    role = selectors.role_get(name=name)
    if role is None:
        raise NotFound("Role not found.", code="role_not_found")
    return role


class RoleDetailView(APIView):
    permission_classes = [
        HasPermission.by_method({"GET": "roles:read", "PATCH": "roles:write", "DELETE": "roles:write"})
    ]

    @extend_schema(responses=s.RoleOutputSerializer)
    def get(self, request, role_name):
        return Response(s.RoleOutputSerializer(_role_or_404(role_name)).data)

    @extend_schema(request=s.RoleUpdateSerializer, responses=s.RoleOutputSerializer)
    def patch(self, request, role_name):
        role = _role_or_404(role_name)
        data = s.RoleUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        role = services.role_update(role=role, actor=request.user, **data.validated_data)
        return Response(s.RoleOutputSerializer(role).data)

    @extend_schema(responses={204: None})
    def delete(self, request, role_name):
        services.role_delete(role=_role_or_404(role_name), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiKeyListCreateView(APIView):
    permission_classes = [HasPermission.by_method({"GET": "apikeys:read", "POST": "apikeys:write"})]

    @extend_schema(responses=s.ApiKeyOutputSerializer(many=True))
    def get(self, request):
        include_revoked = request.query_params.get("include_revoked") in ("1", "true")
        return Response(
            s.ApiKeyOutputSerializer(selectors.api_key_list(include_revoked=include_revoked), many=True).data
        )

    @extend_schema(request=s.ApiKeyCreateSerializer, responses={201: s.ApiKeyCreatedSerializer})
    def post(self, request):
        data = s.ApiKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = services.api_key_create(actor=request.user, **data.validated_data)
        out = s.ApiKeyOutputSerializer(issued.api_key).data
        out["key"] = issued.key
        return Response(out, status=status.HTTP_201_CREATED)


class ApiKeyDetailView(APIView):
    permission_classes = [HasPermission.of("apikeys:write")]

    @extend_schema(responses=s.ApiKeyOutputSerializer)
    def delete(self, request, key_id):
        api_key = selectors.api_key_list(include_revoked=True).filter(pk=key_id).first()
        if api_key is None:
            raise NotFound("API key not found.", code="api_key_not_found")
        services.api_key_revoke(api_key=api_key, actor=request.user)
        return Response(s.ApiKeyOutputSerializer(api_key).data)
