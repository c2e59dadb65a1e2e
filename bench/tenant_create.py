"""How long does creating a tenant take?

Creates N throw-away tenants (schemas ``bench_<random>``) through
``apps.tenancy.services.tenant_create`` against the dev database, times each one and splits
the time by phase (see PHASES), then creates tenant(s) the old way — replaying every
migration — for comparison. Everything it created is dropped at the end (schemas, tenant,
domain and subscription rows, platform audit rows), also on Ctrl-C.

    .venv/bin/python bench/tenant_create.py --count 20
    .venv/bin/python bench/tenant_create.py --count 20 --ballast 150 --ddl-replay
    .venv/bin/python bench/tenant_create.py --count 3 --profile
    .venv/bin/python bench/tenant_create.py --cleanup        # leftovers of a killed run

--ballast K   first adds K extra tenant-shaped schemas (no tenant rows), to see how creation
              behaves in a database that already holds many tenants.
--ddl-replay  also times the proposed alternative to clone_schema(): the template's DDL
              captured once with pg_dump, replayed per tenant, plus its seeded rows.
--profile     cProfiles one extra cloned tenant (Python side) and prints the top calls.
--same-connection  create all tenants on one connection (default: a fresh one each, not timed).

Target: ≤ 500 ms per tenant.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import DatabaseError, connection, transaction  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from django_tenants import models as tenant_models  # noqa: E402
from django_tenants.clone import CloneSchema  # noqa: E402
from django_tenants.utils import schema_exists  # noqa: E402

from apps.tenancy.services import tenant_create  # noqa: E402

PREFIX = "bench_"
TARGET_MS = 500.0
CATALOGS = ("pg_attribute", "pg_class", "pg_constraint", "pg_depend", "pg_index", "pg_type", "pg_attrdef", "pg_proc")
PHASES = {
    "clone_fn_ddl": "CREATE OR REPLACE FUNCTION clone_schema(...), re-sent by django-tenants on every call",
    "clone_sql": "SELECT clone_schema(template, new, 'DATA'): tables, indexes, FKs, sequences, rows",
    "migrate_schemas": "migrate_schemas --fake on the new schema (its django_migrations rows were cloned)",
    "rest": "tenant_create itself: checks, tenant/domain/subscription rows, platform audit row, commit",
}


# --- measuring ------------------------------------------------------------------------------------


class PhaseTimer:
    """Wraps what django-tenants calls inside ``TenantMixin.create_schema`` so each tenant's
    wall time splits into PHASES."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)

    def _timed(self, phase: str, func: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.current[phase] += (time.perf_counter() - started) * 1000

        return wrapper

    @contextmanager
    def installed(self) -> Iterator[None]:
        clone, function_ddl = CloneSchema.clone_schema, CloneSchema._create_clone_schema_function
        with (
            mock.patch.object(CloneSchema, "clone_schema", self._timed("clone_sql", clone)),
            mock.patch.object(CloneSchema, "_create_clone_schema_function", self._timed("clone_fn_ddl", function_ddl)),
            mock.patch.object(
                tenant_models, "call_command", self._timed("migrate_schemas", tenant_models.call_command)
            ),
        ):
            yield

    def take(self, total_ms: float) -> dict[str, float]:
        phases = dict(self.current)
        phases["clone_sql"] = phases.get("clone_sql", 0.0) - phases.get("clone_fn_ddl", 0.0)  # nested in it
        phases["rest"] = total_ms - sum(phases.values())
        self.current = defaultdict(float)
        return phases


def percentile(values: list[float], pct: float) -> float:
    """Nearest rank, no interpolation: of 20 samples, p95 is the 19th."""
    ordered = sorted(values)
    return ordered[max(1, -(-len(ordered) * pct // 100)) - 1]


def summary(values: list[float]) -> str:
    return (
        f"count={len(values)}  p50={percentile(values, 50):.0f} ms  p95={percentile(values, 95):.0f} ms  "
        f"max={max(values):.0f} ms  mean={statistics.fmean(values):.0f} ms"
    )


def progress(done: int, total: int, label: str, ms: float | None = None) -> None:
    filled = 24 * done // total
    timing = f"{ms:7.0f} ms" if ms is not None else ""
    line = f"  [{'#' * filled}{'.' * (24 - filled)}] {done:>3}/{total}  {label:<24} {timing}"
    last = done == total
    if sys.stderr.isatty():
        print(f"\r{line}", end="\n" if last else "", file=sys.stderr, flush=True)
    elif last or ms is not None:
        print(line, file=sys.stderr, flush=True)


# --- the ways of making a schema ----------------------------------------------------------------------


def new_schema_name(created: list[str], kind: str = "") -> str:
    while True:
        name = f"{PREFIX}{kind}{secrets.token_hex(5)}"
        if not schema_exists(name):
            created.append(name)  # before creating: cleanup must see it even if this run dies now
            return name


def tenant_create_timed(
    created: list[str], *, fresh: bool = True, profiler: cProfile.Profile | None = None
) -> tuple[str, float]:
    """One tenant_create, timed. ``fresh``: on a new database connection, as a web request
    gets with CONN_MAX_AGE=0 (connecting is not timed). Reusing one connection for many
    clones is slower: the backend's catalog caches grow with every schema it has cloned."""
    if fresh:
        connection.close()
    schema = new_schema_name(created)  # (re)connects
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    try:
        tenant_create(name=f"Bench {schema}", schema_name=schema)
    finally:
        if profiler is not None:
            profiler.disable()
    return schema, (time.perf_counter() - started) * 1000


class TemplateDDL:
    """The proposed alternative to clone_schema(): the template's DDL captured once (here with
    pg_dump; in production once per deploy, after platform_migrate), replayed per tenant,
    plus the template's seeded rows (roles, migrations, content types, permissions) and the
    identity sequences moved past them."""

    def __init__(self, base: str) -> None:
        db = settings.DATABASES["default"]
        argv = ["pg_dump", "--schema-only", "--no-owner", "--no-privileges", "--schema", base, db["NAME"]]
        for flag, key in (("--host", "HOST"), ("--port", "PORT"), ("--username", "USER")):
            if db.get(key):
                argv[1:1] = [flag, str(db[key])]
        env = {**os.environ, "PGPASSWORD": str(db.get("PASSWORD") or "")}
        dump = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
        statements = (
            line
            for line in dump.splitlines()
            if line.strip() and not line.startswith(("--", "SET ", "SELECT pg_catalog.set_config", "\\"))
        )
        self.base = base
        self.ddl = "\n".join(statements)
        self.pattern = re.compile(rf"\b{re.escape(base)}\b")
        with connection.cursor() as cursor:
            cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [base])
            tables = [row[0] for row in cursor.fetchall()]
            self.seeded = []
            for table in tables:
                cursor.execute(f'SELECT EXISTS (SELECT 1 FROM "{base}"."{table}")')
                if cursor.fetchone()[0]:
                    self.seeded.append(table)
            cursor.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND is_identity = 'YES'",
                [base],
            )
            self.identities = [row for row in cursor.fetchall() if row[0] in self.seeded]

    def replay(self, schema: str) -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(self.pattern.sub(schema, self.ddl))
            for table in self.seeded:
                cursor.execute(
                    f'INSERT INTO "{schema}"."{table}" OVERRIDING SYSTEM VALUE SELECT * FROM "{self.base}"."{table}"'
                )
            for table, column in self.identities:
                qualified = f'"{schema}"."{table}"'
                cursor.execute(
                    f'SELECT setval(pg_get_serial_sequence(%s, %s), (SELECT max("{column}") FROM {qualified}))',
                    [qualified, column],
                )


# --- cleaning up ------------------------------------------------------------------------------------------


def cleanup(schemas: list[str]) -> None:
    """Drop the schemas and delete every row tenant_create wrote for them: the tenant
    (cascading to its domain and subscription) and its platform audit rows."""
    from bench._tenants import tenants_drop

    tenants_drop(schemas)
    # Creating and dropping schemas leaves dead rows in the system catalogs, which slow
    # clone_schema() down on the next run until autovacuum gets to them.
    catalogs_analyze(vacuum=True)


def catalogs_analyze(*, vacuum: bool = False) -> None:
    command = "VACUUM ANALYZE" if vacuum else "ANALYZE"
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"{command} {', '.join(f'pg_catalog.{t}' for t in CATALOGS)}")
    except DatabaseError as exc:  # not the catalogs' owner: figures may be off until autovacuum runs
        print(f"(could not {command} the catalogs: {exc})", file=sys.stderr)


def leftovers() -> list[str]:
    from bench._tenants import tenant_leftovers

    return tenant_leftovers(PREFIX)


# --- main ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description="Time tenant_create (clone) against replaying migrations.")
    parser.add_argument("--count", type=int, default=20, help="tenants to create by cloning (default 20)")
    parser.add_argument("--replay-count", type=int, default=1, help="tenants to create by replaying migrations")
    parser.add_argument("--ballast", type=int, default=0, metavar="K", help="first add K extra tenant schemas")
    parser.add_argument("--same-connection", action="store_true", help="create every tenant on one connection")
    parser.add_argument("--ddl-replay", action="store_true", help="also time the pg_dump DDL alternative")
    parser.add_argument("--profile", action="store_true", help="cProfile one extra clone, print the top calls")
    parser.add_argument("--cleanup", action="store_true", help="only remove bench_* leftovers of an earlier run")
    args = parser.parse_args()

    db = settings.DATABASES["default"]
    print(f"database {db['NAME']} on {db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}")
    if args.cleanup:
        found = leftovers()
        cleanup(found)
        print(f"removed {len(found)} bench schema(s)")
        return 0
    base = settings.TENANT_BASE_SCHEMA
    if not schema_exists(base):
        print(f"template schema {base!r} is missing: run `manage.py platform_migrate` first", file=sys.stderr)
        return 2
    if args.ddl_replay and not shutil.which("pg_dump"):
        print("--ddl-replay needs pg_dump on PATH", file=sys.stderr)
        return 2

    created: list[str] = []
    timer = PhaseTimer()
    clone_ms: list[float] = []
    phases: list[dict[str, float]] = []
    replay_ms: list[float] = []
    ddl_ms: list[float] = []
    profile_text = ""
    try:
        template_ddl = TemplateDDL(base) if (args.ddl_replay or args.ballast) else None
        if args.ballast:
            print(f"\nballast: {args.ballast} extra tenant-shaped schemas (no tenant rows)")
            for i in range(args.ballast):
                template_ddl.replay(new_schema_name(created, "ballast_"))
                progress(i + 1, args.ballast, "ballast")
            # as a database that grew to this size over time would be (on stale catalog
            # statistics clone_schema()'s information_schema queries run ~15% slower)
            catalogs_analyze()
        with connection.cursor() as cursor:
            cursor.execute(
                r"SELECT count(*) FROM pg_namespace WHERE nspname NOT LIKE 'pg\_%%' AND nspname <> 'information_schema'"
            )
            schemas_now = cursor.fetchone()[0]
        how = "one connection for all" if args.same_connection else "a fresh connection each"
        print(f"\nclone from {base!r} ({schemas_now} schemas in the database), {args.count} tenants, {how}:")
        with timer.installed():
            for i in range(args.count):
                schema, ms = tenant_create_timed(created, fresh=not args.same_connection)
                clone_ms.append(ms)
                phases.append(timer.take(ms))
                progress(i + 1, args.count, schema, ms)

        if args.profile:
            profiler = cProfile.Profile()
            tenant_create_timed(created, profiler=profiler)
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
            profile_text = out.getvalue()

        print(f"\nreplaying every migration (no template), {args.replay_count} tenant(s):")
        with override_settings(TENANT_CREATION_FAKES_MIGRATIONS=False, TENANT_BASE_SCHEMA=None):
            for i in range(args.replay_count):
                schema, ms = tenant_create_timed(created)
                replay_ms.append(ms)
                progress(i + 1, args.replay_count, schema, ms)

        if args.ddl_replay:
            print(f"\nproposed: replay the template's DDL captured once, {args.count} schemas (schema only):")
            for i in range(args.count):
                connection.close()
                schema = new_schema_name(created, "ddl_")
                started = time.perf_counter()
                template_ddl.replay(schema)
                ddl_ms.append((time.perf_counter() - started) * 1000)
                progress(i + 1, args.count, schema, ddl_ms[-1])
    finally:
        print(f"\ncleaning up {len(created)} bench schema(s)...", file=sys.stderr)
        cleanup(created)

    print("\n== tenant_create, cloned from the template ==")
    print(summary(clone_ms))
    if len(clone_ms) > 2:
        print(f"first call (cold imports and caches) {clone_ms[0]:.0f} ms; without it: {summary(clone_ms[1:])}")
    print("where the time goes (p50 ms, mean ms, share of total):")
    for phase, meaning in PHASES.items():
        values = [p.get(phase, 0.0) for p in phases]
        p50, mean, share = percentile(values, 50), statistics.fmean(values), 100 * sum(values) / sum(clone_ms)
        print(f"  {phase:<16} {p50:5.0f} {mean:5.0f}  {share:4.1f}%  {meaning}")
    if replay_ms:
        print("\n== tenant_create, replaying migrations ==")
        print(summary(replay_ms))
        print(f"cloning is {statistics.fmean(replay_ms) / statistics.fmean(clone_ms):.1f}x faster (by mean)")
    if ddl_ms:
        print("\n== proposed: template DDL captured once + seeded rows (replaces clone_sql + clone_fn_ddl) ==")
        print(summary(ddl_ms))
    verdict = "OK" if percentile(clone_ms, 95) <= TARGET_MS else "OVER TARGET"
    print(f"\ntarget p95 <= {TARGET_MS:.0f} ms: {verdict}")
    if profile_text:
        print("\n== cProfile of one cloned tenant (top 25 by cumulative time) ==")
        print(profile_text)

    remaining = leftovers()
    if remaining:
        print(f"LEFTOVERS (run with --cleanup): {remaining}", file=sys.stderr)
        return 1
    print("cleanup: no bench schema or tenant row left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
