from django.urls import path

from apps.accounts.api import views

urlpatterns = [
    path("me", views.MeView.as_view(), name="me"),
    path("auth/login", views.LoginView.as_view(), name="auth-login"),
    path("auth/logout", views.LogoutView.as_view(), name="auth-logout"),
    path("auth/invitations/accept", views.InvitationAcceptView.as_view(), name="invitation-accept"),
    path("users", views.UserListCreateView.as_view(), name="user-list"),
    path("users/<uuid:user_id>", views.UserDetailView.as_view(), name="user-detail"),
    *[
        path(
            f"users/<uuid:user_id>/{action}", views.UserStatusView.as_view(), {"action": action}, name=f"user-{action}"
        )
        for action in views.UserStatusView.actions
    ],
    path("users/<uuid:user_id>/roles", views.UserRolesView.as_view(), name="user-roles"),
    path("users/<uuid:user_id>/roles/<slug:role_name>", views.UserRoleDetailView.as_view(), name="user-role-detail"),
    path("roles", views.RoleListCreateView.as_view(), name="role-list"),
    path("roles/<slug:role_name>", views.RoleDetailView.as_view(), name="role-detail"),
    path("api-keys", views.ApiKeyListCreateView.as_view(), name="apikey-list"),
    path("api-keys/<uuid:key_id>", views.ApiKeyDetailView.as_view(), name="apikey-detail"),
]
