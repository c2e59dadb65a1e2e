"""The accounts API (/api/v1/...) over real credentials: knox tokens, session cookies and
API keys. Every theme ends with the other tenant trying the same thing, failing, and the
other tenant's accounts data (users, grants, roles, keys, tokens, audit rows) unchanged."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tenants.utils import schema_context
from knox.models import AuthToken
from rest_framework.test import APIClient

from apps.accounts.models import ApiKey, Role, User, UserRole
from apps.accounts.services import api_key_hash
from apps.accounts.tests.factories import FACTORY_PASSWORD, RoleFactory, UserFactory
from apps.audit.models import AuditLog
from conftest import SEED_PASSWORD, SYSTEM_ROLE_NAMES, seed_email, tenant_host

NEW_PASSWORD = "Brand-New-Pass-2026!"


def anonymous(tenant) -> APIClient:
    return APIClient(HTTP_HOST=tenant_host(tenant))


def _audit_exists(tenant, action: str, resource_id) -> bool:
    with schema_context(tenant.schema_name):
        return AuditLog.objects.filter(action=action, resource_id=str(resource_id)).exists()


# =========================================================================================
# me
# =========================================================================================
class TestMe:
    def test_get_me_with_a_token(self, acme, seed_user, token_client):
        user = seed_user(acme, "knowledge_manager")
        response = token_client(acme, user).get("/api/v1/me")
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["id"] == str(user.pk)
        assert body["email"] == seed_email("knowledge_manager", "acme")
        assert body["roles"] == ["knowledge_manager"]
        assert body["permissions"] == ["conversations:read", "docs:*"]
        assert body["tenant"] == {"id": str(acme.pk), "name": acme.name, "schema": "acme"}
        assert "password" not in body

    def test_get_me_with_a_session(self, acme, seed_user, client_for):
        response = client_for(acme, seed_user(acme, "user")).get("/api/v1/me")
        assert response.status_code == 200
        assert response.json()["email"] == seed_email("user", "acme")

    def test_patch_me(self, acme, seed_user, token_client):
        user = seed_user(acme, "agent")
        response = token_client(acme, user).patch(
            "/api/v1/me",
            {"first_name": "Ada", "preferences": {"theme": "dark"}, "email": "evil@example.test", "status": "x"},
            format="json",
        )
        assert response.status_code == 200, response.content
        assert response.json()["first_name"] == "Ada"
        assert response.json()["preferences"] == {"theme": "dark"}
        with schema_context(acme.schema_name):
            stored = User.objects.get(pk=user.pk)
            assert (stored.first_name, stored.preferences) == ("Ada", {"theme": "dark"})
            assert stored.email == seed_email("agent", "acme")  # not writable here
            assert stored.status == User.Status.ACTIVE
        assert _audit_exists(acme, "user.updated", user.pk)

    def test_patch_me_validates(self, acme, seed_user, token_client, assert_error):
        response = token_client(acme, seed_user(acme, "agent")).patch(
            "/api/v1/me", {"avatar_url": "not a url"}, format="json"
        )
        error = assert_error(response, 400, "validation_error")
        assert "avatar_url" in error["details"]

    def test_me_needs_a_person(self, acme, issue_key, key_client, assert_error):
        issued = issue_key(acme, ["tenant_admin"])
        assert_error(key_client(acme, issued.key).get("/api/v1/me"), 403, "permission_denied")

    def test_me_anonymous(self, acme, assert_error):
        assert_error(anonymous(acme).get("/api/v1/me"), 401, "not_authenticated")

    def test_acme_credentials_are_nobody_on_globex(
        self, acme, globex, seed_user, token_client, client_for, assert_error, unchanged
    ):
        user = seed_user(acme, "tenant_admin")
        session = client_for(acme, user)
        assert session.get("/api/v1/me").status_code == 200
        cross_session = client_for(globex)
        cross_session.cookies = session.cookies
        with unchanged(globex):
            cross_token = token_client(acme, user, host=globex)
            assert_error(cross_token.get("/api/v1/me"), 401, "authentication_failed")
            assert_error(
                cross_token.patch("/api/v1/me", {"first_name": "X"}, format="json"), 401, "authentication_failed"
            )
            assert_error(cross_session.get("/api/v1/me"), 401, "not_authenticated")
            assert_error(
                cross_session.patch("/api/v1/me", {"first_name": "X"}, content_type="application/json"),
                401,
                "not_authenticated",
            )


# =========================================================================================
# auth/login, logout
# =========================================================================================
class TestLogin:
    def test_login_returns_a_working_token(self, acme, seed_user):
        response = anonymous(acme).post(
            "/api/v1/auth/login",
            {"email": seed_email("agent", "acme").upper(), "password": SEED_PASSWORD},
            format="json",
        )
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["user"]["email"] == seed_email("agent", "acme")
        assert body["user"]["roles"] == ["agent"]
        token = body["token"]
        assert token
        client = anonymous(acme)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        me = client.get("/api/v1/me")
        assert me.status_code == 200
        assert me.json()["email"] == seed_email("agent", "acme")
        with schema_context(acme.schema_name):
            user = User.objects.get(email=seed_email("agent", "acme"))
            assert user.last_login is not None
            assert AuthToken.objects.filter(user=user).count() == 1

    @pytest.mark.parametrize(
        ("email", "password"),
        [
            ("agent@acme.test", "wrong-password"),
            ("nobody@acme.test", SEED_PASSWORD),  # the same answer: no account enumeration
            ("agent@acme.test", SEED_PASSWORD + " "),
        ],
    )
    def test_wrong_credentials(self, acme, assert_error, email, password):
        with schema_context(acme.schema_name):
            tokens = AuthToken.objects.count()
        response = anonymous(acme).post("/api/v1/auth/login", {"email": email, "password": password}, format="json")
        assert_error(response, 400, "invalid_credentials")
        with schema_context(acme.schema_name):
            assert AuthToken.objects.count() == tokens

    def test_login_input_is_validated(self, acme, assert_error):
        error = assert_error(
            anonymous(acme).post("/api/v1/auth/login", {"email": "x"}, format="json"), 400, "validation_error"
        )
        assert {"email", "password"} <= set(error["details"])

    @pytest.mark.parametrize("status", ["inactive", "suspended"])
    def test_non_active_user_cannot_log_in(self, acme, assert_error, status):
        with schema_context(acme.schema_name):
            user = UserFactory(roles=["agent"], status=status)
        response = anonymous(acme).post(
            "/api/v1/auth/login", {"email": user.email, "password": FACTORY_PASSWORD}, format="json"
        )
        assert_error(response, 400, "invalid_credentials")

    def test_token_dies_with_deactivation_and_logout(self, acme, seed_user, token_client, assert_error):
        admin = token_client(acme, seed_user(acme, "tenant_admin"))
        with schema_context(acme.schema_name):
            user = UserFactory(roles=["agent"])
        client = token_client(acme, user)
        assert client.get("/api/v1/me").status_code == 200
        assert admin.post(f"/api/v1/users/{user.pk}/deactivate").status_code == 200
        assert_error(client.get("/api/v1/me"), 401, "authentication_failed")

        other = token_client(acme, seed_user(acme, "user"))
        assert other.post("/api/v1/auth/logout").status_code == 204
        assert_error(other.get("/api/v1/me"), 401, "authentication_failed")

    def test_session_logout_ends_the_session(self, acme, seed_user, client_for, token_for, assert_error):
        user = seed_user(acme, "agent")
        client = client_for(acme, user)
        token = token_for(acme, user)  # another credential of the same person
        assert client.get("/api/v1/me").status_code == 200
        assert client.post("/api/v1/auth/logout").status_code == 204
        assert_error(client.get("/api/v1/me"), 401, "not_authenticated")
        other = anonymous(acme)
        other.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        assert other.get("/api/v1/me").status_code == 200  # only the session ended

    def test_session_dies_with_deactivation(self, acme, seed_user, client_for, token_client, assert_error):
        with schema_context(acme.schema_name):
            user = UserFactory(roles=["tenant_admin"])
        client = client_for(acme)
        with schema_context(acme.schema_name):
            assert client.login(email=user.email, password=FACTORY_PASSWORD)
        assert client.get("/api/v1/me").status_code == 200
        assert client.get("/admin/").status_code == 200
        admin = token_client(acme, seed_user(acme, "tenant_admin"))
        assert admin.post(f"/api/v1/users/{user.pk}/deactivate").status_code == 200
        assert_error(client.get("/api/v1/me"), 401, "not_authenticated")
        assert client.get("/admin/").status_code == 302

    def test_acme_credentials_cannot_log_in_on_globex(self, acme, globex, can_log_in, assert_error, unchanged):
        assert can_log_in(acme, seed_email("tenant_admin", "acme"))
        with unchanged(globex):
            assert not can_log_in(globex, seed_email("tenant_admin", "acme"))
            response = anonymous(globex).post(
                "/api/v1/auth/login",
                {"email": seed_email("tenant_admin", "acme"), "password": SEED_PASSWORD},
                format="json",
            )
            assert_error(response, 400, "invalid_credentials")

    def test_acme_token_is_unknown_on_globex(self, acme, globex, assert_error, unchanged):
        login = anonymous(acme).post(
            "/api/v1/auth/login",
            {"email": seed_email("tenant_admin", "acme"), "password": SEED_PASSWORD},
            format="json",
        )
        token = login.json()["token"]
        client = anonymous(globex)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        with unchanged(globex):
            assert_error(client.get("/api/v1/users"), 401, "authentication_failed")
            assert_error(client.post("/api/v1/auth/logout"), 401, "authentication_failed")

    def test_suspended_tenant_refuses_login(self, initech, assert_error):
        response = anonymous(initech).post(
            "/api/v1/auth/login",
            {"email": seed_email("tenant_admin", "initech"), "password": SEED_PASSWORD},
            format="json",
        )
        assert_error(response, 403, "tenant_suspended")


# =========================================================================================
# invitations
# =========================================================================================
class TestInvitations:
    def test_invite_accept_login(self, acme, seed_user, token_client, assert_error):
        admin = token_client(acme, seed_user(acme, "tenant_admin"))
        created = admin.post("/api/v1/users", {"email": "invitee@acme.test", "roles": ["user"]}, format="json")
        assert created.status_code == 201, created.content
        token = created.json()["invitation_token"]
        assert token

        login = {"email": "invitee@acme.test", "password": NEW_PASSWORD}
        assert_error(anonymous(acme).post("/api/v1/auth/login", login, format="json"), 400, "invalid_credentials")

        accepted = anonymous(acme).post(
            "/api/v1/auth/invitations/accept", {"token": token, "password": NEW_PASSWORD}, format="json"
        )
        assert accepted.status_code == 200, accepted.content
        assert accepted.json()["email_verified"] is True
        assert anonymous(acme).post("/api/v1/auth/login", login, format="json").status_code == 200

        again = anonymous(acme).post(
            "/api/v1/auth/invitations/accept", {"token": token, "password": "Other-Pass-2026!"}, format="json"
        )
        assert_error(again, 400, "invitation_invalid")

    def test_acme_invitation_is_refused_on_globex(self, acme, globex, seed_user, token_client, assert_error, unchanged):
        admin = token_client(acme, seed_user(acme, "tenant_admin"))
        token = admin.post("/api/v1/users", {"email": "invitee@acme.test"}, format="json").json()["invitation_token"]
        with unchanged(globex):
            response = anonymous(globex).post(
                "/api/v1/auth/invitations/accept", {"token": token, "password": NEW_PASSWORD}, format="json"
            )
            assert_error(response, 400, "invitation_invalid")
        with schema_context(acme.schema_name):
            assert not User.objects.get(email="invitee@acme.test").has_usable_password()


# =========================================================================================
# users
# =========================================================================================
class TestUsers:
    def test_list(self, acme, seed_user, token_client):
        response = token_client(acme, seed_user(acme, "tenant_admin")).get("/api/v1/users")
        assert response.status_code == 200, response.content
        body = response.json()
        with schema_context(acme.schema_name):
            emails = list(User.objects.order_by("email").values_list("email", flat=True))
        assert body["count"] == len(emails)
        assert [u["email"] for u in body["results"]] == emails
        by_email = {u["email"]: u for u in body["results"]}
        for role in SYSTEM_ROLE_NAMES:
            assert by_email[seed_email(role, "acme")]["roles"] == [role]
        assert all("password" not in u for u in body["results"])

    def test_list_filters(self, acme, seed_user, token_client):
        client = token_client(acme, seed_user(acme, "tenant_admin"))
        with schema_context(acme.schema_name):
            UserFactory(email="zed.filter@acme.test", roles=["agent"], status="suspended")
        by_role = client.get("/api/v1/users", {"role": "agent"}).json()["results"]
        assert {u["email"] for u in by_role} == {seed_email("agent", "acme"), "zed.filter@acme.test"}
        by_status = client.get("/api/v1/users", {"status": "suspended"}).json()["results"]
        assert [u["email"] for u in by_status] == ["zed.filter@acme.test"]
        by_search = client.get("/api/v1/users", {"search": "ZED.FIL"}).json()["results"]
        assert [u["email"] for u in by_search] == ["zed.filter@acme.test"]

    def test_list_query_count_does_not_grow_with_users(self, acme, seed_user, token_client):
        client = token_client(acme, seed_user(acme, "tenant_admin"))
        with CaptureQueriesContext(connection) as few:
            assert client.get("/api/v1/users").status_code == 200
        with schema_context(acme.schema_name):
            for _ in range(8):
                UserFactory(roles=["agent", "user"])
        with CaptureQueriesContext(connection) as many:
            response = client.get("/api/v1/users")
        assert response.json()["count"] >= 13
        assert len(many) == len(few), [q["sql"] for q in many.captured_queries]

    def test_create_with_password(self, acme, seed_user, token_client):
        admin = seed_user(acme, "tenant_admin")
        response = token_client(acme, admin).post(
            "/api/v1/users",
            {"email": "new@acme.test", "password": NEW_PASSWORD, "first_name": "N", "roles": ["agent"]},
            format="json",
        )
        assert response.status_code == 201, response.content
        body = response.json()
        assert body["roles"] == ["agent"]
        assert body["invitation_token"] is None
        assert "password" not in body
        with schema_context(acme.schema_name):
            audit = AuditLog.objects.get(action="user.created", resource_id=body["id"])
            assert audit.actor_id == admin.pk
        login = anonymous(acme).post(
            "/api/v1/auth/login", {"email": "new@acme.test", "password": NEW_PASSWORD}, format="json"
        )
        assert login.status_code == 200

    def test_create_errors(self, acme, seed_user, token_client, assert_error):
        client = token_client(acme, seed_user(acme, "tenant_admin"))
        with schema_context(acme.schema_name):
            users = User.objects.count()
        dup = client.post("/api/v1/users", {"email": seed_email("agent", "acme").upper()}, format="json")
        assert assert_error(dup, 409, "user_exists")["details"] == {"email": "AGENT@acme.test"}
        weak = client.post("/api/v1/users", {"email": "w@acme.test", "password": "password"}, format="json")
        assert "password" in assert_error(weak, 400, "weak_password")["details"]
        unknown = client.post("/api/v1/users", {"email": "u@acme.test", "roles": ["wizard"]}, format="json")
        assert_error(unknown, 400, "role_not_found")
        escalate = client.post("/api/v1/users", {"email": "e@acme.test", "roles": ["super_admin"]}, format="json")
        assert assert_error(escalate, 403, "permission_escalation")["details"] == {"role": "super_admin"}
        invalid = client.post("/api/v1/users", {"email": "nope"}, format="json")
        assert "email" in assert_error(invalid, 400, "validation_error")["details"]
        with schema_context(acme.schema_name):
            assert User.objects.count() == users

    def test_detail_and_patch(self, acme, seed_user, token_client, assert_error):
        admin = seed_user(acme, "tenant_admin")
        client = token_client(acme, admin)
        target = seed_user(acme, "agent")
        detail = client.get(f"/api/v1/users/{target.pk}")
        assert detail.status_code == 200
        assert detail.json()["email"] == target.email
        patched = client.patch(f"/api/v1/users/{target.pk}", {"last_name": "Smith"}, format="json")
        assert patched.status_code == 200
        assert patched.json()["last_name"] == "Smith"
        with schema_context(acme.schema_name):
            assert User.objects.get(pk=target.pk).last_name == "Smith"
        assert _audit_exists(acme, "user.updated", target.pk)
        missing = "00000000-0000-4000-8000-000000000000"
        assert_error(client.get(f"/api/v1/users/{missing}"), 404, "user_not_found")
        assert_error(client.patch(f"/api/v1/users/{missing}", {}, format="json"), 404, "user_not_found")

    def test_deactivate_suspend_reactivate(self, acme, seed_user, token_client, can_log_in, assert_error):
        admin = seed_user(acme, "tenant_admin")
        client = token_client(acme, admin)
        with schema_context(acme.schema_name):
            target = UserFactory(roles=["agent"])
        response = client.post(f"/api/v1/users/{target.pk}/deactivate")
        assert response.status_code == 200
        assert response.json()["status"] == "inactive"
        assert not can_log_in(acme, target.email, FACTORY_PASSWORD)
        assert _audit_exists(acme, "user.deactivated", target.pk)
        assert client.post(f"/api/v1/users/{target.pk}/suspend").json()["status"] == "suspended"
        assert client.post(f"/api/v1/users/{target.pk}/reactivate").json()["status"] == "active"
        assert can_log_in(acme, target.email, FACTORY_PASSWORD)
        self_deactivate = client.post(f"/api/v1/users/{admin.pk}/deactivate")
        assert_error(self_deactivate, 403, "cannot_deactivate_self")
        with schema_context(acme.schema_name):
            assert User.objects.get(pk=admin.pk).status == User.Status.ACTIVE

    def test_role_grant_and_revoke(self, acme, seed_user, token_client, assert_error):
        admin = seed_user(acme, "tenant_admin")
        client = token_client(acme, admin)
        with schema_context(acme.schema_name):
            target = UserFactory(roles=["user"])
        granted = client.post(f"/api/v1/users/{target.pk}/roles", {"role": "knowledge_manager"}, format="json")
        assert granted.status_code == 201, granted.content
        assert granted.json()["roles"] == ["knowledge_manager", "user"]
        assert _audit_exists(acme, "user.role_granted", target.pk)

        revoked = client.delete(f"/api/v1/users/{target.pk}/roles/knowledge_manager")
        assert revoked.status_code == 204
        assert _audit_exists(acme, "user.role_revoked", target.pk)
        with schema_context(acme.schema_name):
            assert list(UserRole.objects.filter(user=target).values_list("role__name", flat=True)) == ["user"]

        assert_error(client.delete(f"/api/v1/users/{target.pk}/roles/knowledge_manager"), 404, "role_not_granted")
        assert_error(
            client.post(f"/api/v1/users/{target.pk}/roles", {"role": "wizard"}, format="json"), 400, "role_not_found"
        )
        escalate = client.post(f"/api/v1/users/{target.pk}/roles", {"role": "super_admin"}, format="json")
        assert_error(escalate, 403, "permission_escalation")
        with schema_context(acme.schema_name):
            assert list(UserRole.objects.filter(user=target).values_list("role__name", flat=True)) == ["user"]

    @pytest.mark.parametrize("role", ["knowledge_manager", "agent", "user"])
    def test_non_admins_get_403(self, acme, seed_user, token_client, assert_error, tenant_state, role):
        client = token_client(acme, seed_user(acme, role))
        target = seed_user(acme, "user")
        before = tenant_state(acme)
        for method, path, data in [
            ("get", "/api/v1/users", None),
            ("post", "/api/v1/users", {"email": "x@acme.test"}),
            ("get", f"/api/v1/users/{target.pk}", None),
            ("patch", f"/api/v1/users/{target.pk}", {"first_name": "X"}),
            ("post", f"/api/v1/users/{target.pk}/deactivate", None),
            ("post", f"/api/v1/users/{target.pk}/roles", {"role": "agent"}),
            ("delete", f"/api/v1/users/{target.pk}/roles/user", None),
        ]:
            response = getattr(client, method)(path, data, format="json")
            assert_error(response, 403, "permission_denied")
        assert tenant_state(acme) == before

    def test_anonymous_gets_401(self, acme, seed_user, assert_error):
        target = seed_user(acme, "user")
        client = anonymous(acme)
        assert_error(client.get("/api/v1/users"), 401, "not_authenticated")
        assert_error(client.post("/api/v1/users", {"email": "x@acme.test"}, format="json"), 401, "not_authenticated")
        assert_error(client.post(f"/api/v1/users/{target.pk}/deactivate"), 401, "not_authenticated")

    def test_globex_principal_sees_only_globex_users(self, acme, globex, seed_user, token_client):
        with schema_context(acme.schema_name):
            UserFactory(email="only.in.acme@acme.test")
        body = token_client(globex, seed_user(globex, "tenant_admin")).get("/api/v1/users").json()
        emails = {u["email"] for u in body["results"]}
        with schema_context(globex.schema_name):
            assert emails == set(User.objects.values_list("email", flat=True))
        assert body["count"] == len(emails)
        assert all(e.endswith("@globex.test") for e in emails)
        assert "only.in.acme@acme.test" not in emails

    def test_acme_admin_cannot_touch_globex_users(
        self, acme, globex, seed_user, token_client, client_for, assert_error, unchanged
    ):
        acme_admin = seed_user(acme, "tenant_admin")
        victim = seed_user(globex, "agent")
        session = client_for(globex)
        session.cookies = client_for(acme, acme_admin).cookies
        requests = [
            ("get", "/api/v1/users", None),
            (
                "post",
                "/api/v1/users",
                {"email": "planted@globex.test", "password": NEW_PASSWORD, "roles": ["tenant_admin"]},
            ),
            ("get", f"/api/v1/users/{victim.pk}", None),
            ("patch", f"/api/v1/users/{victim.pk}", {"first_name": "Pwned"}),
            ("post", f"/api/v1/users/{victim.pk}/deactivate", None),
            ("post", f"/api/v1/users/{victim.pk}/suspend", None),
            ("post", f"/api/v1/users/{victim.pk}/roles", {"role": "tenant_admin"}),
            ("delete", f"/api/v1/users/{victim.pk}/roles/agent", None),
        ]
        with unchanged(globex):
            # acme's token on globex's host: nobody there
            token_on_globex = token_client(acme, acme_admin, host=globex)
            for method, path, data in requests:
                response = getattr(token_on_globex, method)(path, data, format="json")
                assert_error(response, 401, "authentication_failed")
            # acme's session cookie on globex's host: anonymous there
            for method, path, data in requests:
                response = getattr(session, method)(path, data, content_type="application/json")
                assert_error(response, 401, "not_authenticated")
            # acme's token on acme's host, aimed at a globex user id: not found here
            token_on_acme = token_client(acme, acme_admin)
            for method, path, data in requests[2:]:
                response = getattr(token_on_acme, method)(path, data, format="json")
                assert_error(response, 404, "user_not_found")


# =========================================================================================
# roles
# =========================================================================================
class TestRoles:
    def test_list(self, acme, seed_user, token_client):
        response = token_client(acme, seed_user(acme, "tenant_admin")).get("/api/v1/roles")
        assert response.status_code == 200
        roles = response.json()
        with schema_context(acme.schema_name):
            expected = {r.name: sorted(r.permissions) for r in Role.objects.all()}
        assert {r["name"]: sorted(r["permissions"]) for r in roles} == expected
        assert set(SYSTEM_ROLE_NAMES) <= {r["name"] for r in roles if r["is_system"]}
        flags = [r["is_system"] for r in roles]
        assert flags == sorted(flags, reverse=True)  # system roles first

    def test_create_patch_delete(self, acme, seed_user, token_client, assert_error):
        admin = seed_user(acme, "tenant_admin")
        client = token_client(acme, admin)
        created = client.post(
            "/api/v1/roles",
            {"name": "auditor", "display_name": "Auditor", "permissions": ["audit:read", "users:read"]},
            format="json",
        )
        assert created.status_code == 201, created.content
        assert created.json()["permissions"] == ["audit:read", "users:read"]
        assert created.json()["is_system"] is False
        role_id = created.json()["id"]
        assert _audit_exists(acme, "role.created", role_id)

        patched = client.patch("/api/v1/roles/auditor", {"permissions": ["audit:read"]}, format="json")
        assert patched.status_code == 200
        assert patched.json()["permissions"] == ["audit:read"]
        assert _audit_exists(acme, "role.updated", role_id)
        assert client.get("/api/v1/roles/auditor").json()["permissions"] == ["audit:read"]

        assert client.delete("/api/v1/roles/auditor").status_code == 204
        assert _audit_exists(acme, "role.deleted", role_id)
        assert_error(client.get("/api/v1/roles/auditor"), 404, "role_not_found")
        assert_error(client.delete("/api/v1/roles/auditor"), 404, "role_not_found")

    def test_create_errors(self, acme, seed_user, token_client, assert_error):
        client = token_client(acme, seed_user(acme, "tenant_admin"))
        with schema_context(acme.schema_name):
            roles = Role.objects.count()
        star = client.post("/api/v1/roles", {"name": "god", "display_name": "God", "permissions": ["*"]}, format="json")
        assert_error(star, 403, "permission_escalation")
        platform = client.post(
            "/api/v1/roles", {"name": "op", "display_name": "Op", "permissions": ["platform:admin"]}, format="json"
        )
        assert_error(platform, 403, "permission_escalation")
        bad = client.post("/api/v1/roles", {"name": "bad", "display_name": "B", "permissions": ["docs"]}, format="json")
        assert_error(bad, 400, "invalid_permission")
        dup = client.post("/api/v1/roles", {"name": "agent", "display_name": "A", "permissions": []}, format="json")
        assert_error(dup, 409, "role_exists")
        slug = client.post(
            "/api/v1/roles", {"name": "no spaces", "display_name": "X", "permissions": []}, format="json"
        )
        assert "name" in assert_error(slug, 400, "validation_error")["details"]
        with schema_context(acme.schema_name):
            assert Role.objects.count() == roles

    def test_system_roles_are_protected(self, acme, seed_user, token_client, assert_error):
        client = token_client(acme, seed_user(acme, "super_admin"))
        for name in SYSTEM_ROLE_NAMES:
            assert_error(
                client.patch(f"/api/v1/roles/{name}", {"permissions": ["docs:read"]}, format="json"), 403, "system_role"
            )
            assert_error(client.delete(f"/api/v1/roles/{name}"), 403, "system_role")
        renamed = client.patch("/api/v1/roles/user", {"display_name": "Member"}, format="json")
        assert renamed.status_code == 200
        assert renamed.json()["display_name"] == "Member"
        with schema_context(acme.schema_name):
            assert Role.objects.get(name="user").permissions == ["conversations:create", "conversations:read"]
            assert Role.objects.filter(is_system=True).count() == len(SYSTEM_ROLE_NAMES)

    def test_a_role_manager_cannot_raise_a_role_above_their_rights(self, acme, token_client, assert_error):
        with schema_context(acme.schema_name):
            manager_role = RoleFactory(permissions=["roles:*"])
            manager = UserFactory(roles=[manager_role.name])
        client = token_client(acme, manager)
        response = client.patch(f"/api/v1/roles/{manager_role.name}", {"permissions": ["tenant:*"]}, format="json")
        assert_error(response, 403, "permission_escalation")
        with schema_context(acme.schema_name):
            assert Role.objects.get(pk=manager_role.pk).permissions == ["roles:*"]
        assert_error(client.get("/api/v1/users"), 403, "permission_denied")  # still only roles

    @pytest.mark.parametrize("role", ["knowledge_manager", "agent", "user"])
    def test_non_admins_get_403(self, acme, seed_user, token_client, assert_error, role):
        client = token_client(acme, seed_user(acme, role))
        assert_error(client.get("/api/v1/roles"), 403, "permission_denied")
        post = client.post("/api/v1/roles", {"name": "x", "display_name": "X", "permissions": []}, format="json")
        assert_error(post, 403, "permission_denied")
        assert_error(client.delete("/api/v1/roles/agent"), 403, "permission_denied")
        assert_error(anonymous(acme).get("/api/v1/roles"), 401, "not_authenticated")

    def test_acme_admin_cannot_touch_globex_roles(self, acme, globex, seed_user, token_client, assert_error, unchanged):
        with schema_context(globex.schema_name):
            globex_role = RoleFactory(name="globex_custom", permissions=["docs:read"])
        acme_admin = seed_user(acme, "tenant_admin")
        with unchanged(globex):
            client = token_client(acme, acme_admin, host=globex)
            assert_error(client.get("/api/v1/roles"), 401, "authentication_failed")
            create = {"name": "planted", "display_name": "P", "permissions": ["docs:read"]}
            assert_error(client.post("/api/v1/roles", create, format="json"), 401, "authentication_failed")
            patch = {"permissions": ["tenant:*"]}
            assert_error(
                client.patch(f"/api/v1/roles/{globex_role.name}", patch, format="json"), 401, "authentication_failed"
            )
            assert_error(client.delete(f"/api/v1/roles/{globex_role.name}"), 401, "authentication_failed")
            # on acme's own host the globex role does not exist; a role made there stays there
            home = token_client(acme, acme_admin)
            assert_error(home.get(f"/api/v1/roles/{globex_role.name}"), 404, "role_not_found")
            assert_error(home.delete(f"/api/v1/roles/{globex_role.name}"), 404, "role_not_found")
            assert home.post("/api/v1/roles", create, format="json").status_code == 201
        with schema_context(globex.schema_name):
            assert not Role.objects.filter(name="planted").exists()


# =========================================================================================
# API keys
# =========================================================================================
class TestApiKeys:
    def test_create_list_revoke(self, acme, seed_user, token_client, assert_error):
        admin = seed_user(acme, "tenant_admin")
        client = token_client(acme, admin)
        created = client.post("/api/v1/api-keys", {"name": "CI", "roles": ["agent"]}, format="json")
        assert created.status_code == 201, created.content
        body = created.json()
        key = body["key"]
        assert key.startswith(f"zk_{body['prefix']}_")
        assert body["roles"] == ["agent"]
        assert body["created_by"] == admin.email
        with schema_context(acme.schema_name):
            stored = ApiKey.objects.get(pk=body["id"])
            assert stored.key_hash == api_key_hash(key)
        assert _audit_exists(acme, "api_key.created", body["id"])

        listed = client.get("/api/v1/api-keys").json()
        mine = [k for k in listed if k["id"] == body["id"]]
        assert len(mine) == 1
        assert "key" not in mine[0]  # shown once, at creation
        assert key not in str(listed)

        revoked = client.delete(f"/api/v1/api-keys/{body['id']}")
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        assert _audit_exists(acme, "api_key.revoked", body["id"])
        assert body["id"] not in {k["id"] for k in client.get("/api/v1/api-keys").json()}
        assert body["id"] in {k["id"] for k in client.get("/api/v1/api-keys", {"include_revoked": "1"}).json()}
        assert_error(client.delete("/api/v1/api-keys/00000000-0000-4000-8000-000000000000"), 404, "api_key_not_found")

    def test_create_errors(self, acme, seed_user, token_client, assert_error):
        client = token_client(acme, seed_user(acme, "tenant_admin"))
        escalate = client.post("/api/v1/api-keys", {"name": "k", "roles": ["super_admin"]}, format="json")
        assert_error(escalate, 403, "permission_escalation")
        assert_error(
            client.post("/api/v1/api-keys", {"name": "k", "roles": []}, format="json"), 400, "validation_error"
        )
        assert_error(
            client.post("/api/v1/api-keys", {"name": "k", "roles": ["wizard"]}, format="json"), 400, "role_not_found"
        )
        with schema_context(acme.schema_name):
            assert not ApiKey.objects.filter(name="k").exists()

    def test_knowledge_manager_cannot_issue_keys(self, acme, seed_user, token_client, assert_error):
        client = token_client(acme, seed_user(acme, "knowledge_manager"))
        response = client.post("/api/v1/api-keys", {"name": "k", "roles": ["tenant_admin"]}, format="json")
        assert_error(response, 403, "permission_denied")
        assert_error(client.get("/api/v1/api-keys"), 403, "permission_denied")

    def test_a_key_manager_cannot_issue_a_bigger_key(self, acme, token_client, assert_error):
        with schema_context(acme.schema_name):
            key_manager = UserFactory(roles=[RoleFactory(permissions=["apikeys:*", "docs:*"]).name])
        client = token_client(acme, key_manager)
        escalate = client.post("/api/v1/api-keys", {"name": "k", "roles": ["tenant_admin"]}, format="json")
        assert assert_error(escalate, 403, "permission_escalation")["details"] == {"role": "tenant_admin"}
        partly = client.post("/api/v1/api-keys", {"name": "k", "roles": ["knowledge_manager"]}, format="json")
        assert_error(partly, 403, "permission_escalation")  # knowledge_manager also holds conversations:read
        with schema_context(acme.schema_name):
            docs_role = RoleFactory(permissions=["docs:read"])
        ok = client.post("/api/v1/api-keys", {"name": "k", "roles": [docs_role.name]}, format="json")
        assert ok.status_code == 201, ok.content

    def test_list_query_count_does_not_grow_with_keys(self, acme, seed_user, token_client, issue_key):
        client = token_client(acme, seed_user(acme, "tenant_admin"))
        issue_key(acme, ["agent"])
        with CaptureQueriesContext(connection) as few:
            assert len(client.get("/api/v1/api-keys").json()) == 1
        for _ in range(6):
            issue_key(acme, ["agent", "user"])
        with CaptureQueriesContext(connection) as many:
            assert len(client.get("/api/v1/api-keys").json()) == 7
        assert len(many) == len(few), [q["sql"] for q in many.captured_queries]

    @pytest.mark.parametrize("header", ["authorization", "x-api-key"])
    def test_a_valid_key_authenticates(self, acme, issue_key, key_client, header):
        issued = issue_key(acme, ["tenant_admin"])
        response = key_client(acme, issued.key, header=header).get("/api/v1/users")
        assert response.status_code == 200, response.content
        with schema_context(acme.schema_name):
            assert response.json()["count"] == User.objects.count()
            assert ApiKey.objects.get(pk=issued.api_key.pk).last_used_at is not None

    def test_a_key_acts_with_its_roles_and_is_audited_as_itself(self, acme, issue_key, key_client):
        issued = issue_key(acme, ["tenant_admin"])
        response = key_client(acme, issued.key).post("/api/v1/users", {"email": "bot.made@acme.test"}, format="json")
        assert response.status_code == 201, response.content
        with schema_context(acme.schema_name):
            audit = AuditLog.objects.get(action="user.created", resource_id=response.json()["id"])
            assert audit.actor_id is None
            assert issued.api_key.prefix in audit.actor_label
        escalate = key_client(acme, issued.key).post(
            "/api/v1/api-keys", {"name": "k2", "roles": ["super_admin"]}, format="json"
        )
        assert escalate.status_code == 403
        assert escalate.json()["error"]["code"] == "permission_escalation"

    def test_a_user_role_key_gets_403_on_users(self, acme, issue_key, key_client, assert_error):
        issued = issue_key(acme, ["user"])
        client = key_client(acme, issued.key)
        assert_error(client.get("/api/v1/users"), 403, "permission_denied")
        assert_error(client.get("/api/v1/roles"), 403, "permission_denied")
        assert_error(
            client.post("/api/v1/api-keys", {"name": "k", "roles": ["user"]}, format="json"), 403, "permission_denied"
        )

    def test_revoked_key_is_refused(self, acme, seed_user, issue_key, key_client, token_client, assert_error):
        issued = issue_key(acme, ["tenant_admin"])
        client = key_client(acme, issued.key)
        assert client.get("/api/v1/users").status_code == 200
        admin = token_client(acme, seed_user(acme, "tenant_admin"))
        assert admin.delete(f"/api/v1/api-keys/{issued.api_key.pk}").status_code == 200
        assert_error(client.get("/api/v1/users"), 401, "authentication_failed")
        assert_error(
            key_client(acme, issued.key, header="x-api-key").get("/api/v1/users"), 401, "authentication_failed"
        )

    def test_expired_key_is_refused(self, acme, issue_key, key_client, assert_error):
        issued = issue_key(acme, ["tenant_admin"], expires_at=timezone.now() + timedelta(minutes=1))
        assert key_client(acme, issued.key).get("/api/v1/users").status_code == 200
        with schema_context(acme.schema_name):  # time passes: the key is now past its expiry
            ApiKey.objects.filter(pk=issued.api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
        assert_error(key_client(acme, issued.key).get("/api/v1/users"), 401, "authentication_failed")

    @pytest.mark.parametrize("mangle", ["wrong_secret", "garbage", "no_prefix"])
    def test_malformed_or_wrong_key_is_refused(self, acme, issue_key, key_client, assert_error, mangle):
        key = issue_key(acme, ["tenant_admin"]).key
        raw = {
            "wrong_secret": key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB"),
            "garbage": "zk_nothing",
            "no_prefix": key.removeprefix("zk_"),
        }[mangle]
        assert_error(key_client(acme, raw).get("/api/v1/users"), 401, "authentication_failed")

    def test_acme_key_is_refused_on_globex(self, acme, globex, issue_key, key_client, assert_error, unchanged):
        issued = issue_key(acme, ["tenant_admin"])
        assert key_client(acme, issued.key).get("/api/v1/users").status_code == 200
        with unchanged(globex):
            for header in ("authorization", "x-api-key"):
                client = key_client(globex, issued.key, header=header)
                assert_error(client.get("/api/v1/users"), 401, "authentication_failed")
                assert_error(
                    client.post("/api/v1/users", {"email": "planted@globex.test"}, format="json"),
                    401,
                    "authentication_failed",
                )
                assert_error(
                    client.post("/api/v1/api-keys", {"name": "k", "roles": ["tenant_admin"]}, format="json"),
                    401,
                    "authentication_failed",
                )

    def test_acme_admin_cannot_touch_globex_keys(
        self, acme, globex, seed_user, issue_key, token_client, key_client, assert_error, unchanged
    ):
        globex_key = issue_key(globex, ["tenant_admin"])
        acme_admin = seed_user(acme, "tenant_admin")
        with unchanged(globex):
            cross = token_client(acme, acme_admin, host=globex)
            assert_error(cross.get("/api/v1/api-keys"), 401, "authentication_failed")
            assert_error(cross.delete(f"/api/v1/api-keys/{globex_key.api_key.pk}"), 401, "authentication_failed")
            home = token_client(acme, acme_admin)
            assert_error(home.delete(f"/api/v1/api-keys/{globex_key.api_key.pk}"), 404, "api_key_not_found")
            assert globex_key.api_key.prefix not in {k["prefix"] for k in home.get("/api/v1/api-keys").json()}
        with schema_context(globex.schema_name):
            assert ApiKey.objects.get(pk=globex_key.api_key.pk).revoked_at is None
        # and the globex key still works at home
        at_home = key_client(globex, globex_key.key).get("/api/v1/users")
        assert at_home.status_code == 200
        assert all(u["email"].endswith("@globex.test") for u in at_home.json()["results"])
