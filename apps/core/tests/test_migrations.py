"""Models and migrations agree (what CI's ``makemigrations --check`` enforces)."""

from io import StringIO

from django.core.management import call_command


def test_no_missing_migrations(db):
    out = StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exc:  # --check exits 1 when a migration would be written
        raise AssertionError(
            f"makemigrations --check found model changes without migrations:\n{out.getvalue()}"
        ) from exc

    assert "No changes detected" in out.getvalue()
