"""Chinese by default, English on request: what Django's LocaleMiddleware supports is the
``django_language`` cookie (set by POST /i18n/setlang/) and the Accept-Language header."""

from django.conf import settings
from django.test import Client

LOGIN = "/admin/login/"


def _page(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def test_admin_login_is_chinese_by_default(acme):
    page = _page(Client(HTTP_HOST="acme.localhost").get(LOGIN))

    assert settings.LANGUAGE_CODE == "zh-hans"
    assert '<html lang="zh-hans"' in page
    assert "登录" in page and "密码" in page and "邮箱" in page
    assert "Log in" not in page


def test_admin_login_follows_accept_language(acme):
    page = _page(Client(HTTP_HOST="acme.localhost").get(LOGIN, HTTP_ACCEPT_LANGUAGE="en-US,en;q=0.9"))

    assert '<html lang="en"' in page
    assert "Log in" in page and "Password" in page
    assert "登录" not in page


def test_admin_login_follows_the_language_cookie(acme):
    client = Client(HTTP_HOST="acme.localhost")
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"

    page = _page(client.get(LOGIN, HTTP_ACCEPT_LANGUAGE="zh-CN"))  # the cookie wins

    assert "Log in" in page and "登录" not in page


def test_set_language_view_switches_to_english_and_back(acme):
    client = Client(HTTP_HOST="acme.localhost")

    response = client.post("/i18n/setlang/", {"language": "en", "next": LOGIN})
    assert response.status_code == 302
    assert client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "en"
    assert "Log in" in _page(client.get(LOGIN))

    client.post("/i18n/setlang/", {"language": "zh-hans", "next": LOGIN})
    assert "登录" in _page(client.get(LOGIN))


def test_unsupported_language_falls_back_to_chinese(acme):
    page = _page(Client(HTTP_HOST="acme.localhost").get(LOGIN, HTTP_ACCEPT_LANGUAGE="fr-FR,fr;q=0.9"))

    assert "登录" in page


def test_an_english_request_does_not_leak_into_the_next_one(acme):
    client = Client(HTTP_HOST="acme.localhost")
    assert "Log in" in _page(client.get(LOGIN, HTTP_ACCEPT_LANGUAGE="en"))

    assert "登录" in _page(client.get(LOGIN))


def test_platform_admin_login_is_chinese_by_default_too(db):
    page = _page(Client(HTTP_HOST="localhost").get(LOGIN))

    assert "知答平台管理" in page and "登录" in page
