"""BM25 statistics per tenant (apps/knowledge/bm25.py): term ids and length on each chunk,
and knowledge_bm25term kept in step with them by statement-level triggers.

Triggers, not service code: chunks are removed by several paths (document delete, a new
version retiring the old one, reprocessing, ON DELETE CASCADE from documents, TRUNCATE in
tests), and the counts must follow whichever ran, in the same transaction. Statement-level
with transition tables: one aggregate UPDATE/INSERT per statement, not one per chunk row.
The function names its tables through TG_TABLE_SCHEMA, never through search_path, so it
counts in the schema of the chunks it saw (and survives django-tenants' schema cloning,
which copies it and its triggers into each new tenant). A transaction-level advisory lock
per schema serialises writers of the counts: two documents swapped in at once would
otherwise lock overlapping term rows in different orders and could deadlock; the
transactions that write chunks are short. The services that lock document rows and then
write chunks take the same lock first (``bm25.counts_lock``), so no one waits for it while
holding a row another holder of it wants. Counts that fall to zero stay as rows (a term no
chunk holds scores nothing)."""

import django.contrib.postgres.fields
from django.db import migrations, models

FUNCTION = r"""
CREATE OR REPLACE FUNCTION knowledge_bm25_stats() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(TG_TABLE_SCHEMA || '.knowledge_bm25term'));
    IF TG_OP = 'TRUNCATE' THEN
        EXECUTE format('DELETE FROM %I.knowledge_bm25term', TG_TABLE_SCHEMA);
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        EXECUTE format($q$
            WITH gone AS (
                SELECT t AS term, count(*) AS n FROM old_chunks, unnest(old_chunks.bm25_terms) AS t GROUP BY t
                UNION ALL SELECT -1, count(*) FROM old_chunks WHERE bm25_terms IS NOT NULL
                UNION ALL SELECT -2, coalesce(sum(bm25_length), 0) FROM old_chunks WHERE bm25_terms IS NOT NULL
            )
            UPDATE %I.knowledge_bm25term AS s SET count = s.count - gone.n
            FROM gone WHERE s.term = gone.term AND gone.n <> 0
        $q$, TG_TABLE_SCHEMA);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        EXECUTE format($q$
            INSERT INTO %I.knowledge_bm25term AS s (term, count)
            SELECT term, n FROM (
                SELECT t AS term, count(*) AS n FROM new_chunks, unnest(new_chunks.bm25_terms) AS t GROUP BY t
                UNION ALL SELECT -1, count(*) FROM new_chunks WHERE bm25_terms IS NOT NULL
                UNION ALL SELECT -2, coalesce(sum(bm25_length), 0) FROM new_chunks WHERE bm25_terms IS NOT NULL
            ) AS added WHERE n <> 0 ORDER BY term
            ON CONFLICT (term) DO UPDATE SET count = s.count + excluded.count
        $q$, TG_TABLE_SCHEMA);
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER knowledge_bm25_insert AFTER INSERT ON knowledge_documentchunk
    REFERENCING NEW TABLE AS new_chunks FOR EACH STATEMENT EXECUTE FUNCTION knowledge_bm25_stats();
CREATE TRIGGER knowledge_bm25_update AFTER UPDATE ON knowledge_documentchunk
    REFERENCING OLD TABLE AS old_chunks NEW TABLE AS new_chunks FOR EACH STATEMENT EXECUTE FUNCTION knowledge_bm25_stats();
CREATE TRIGGER knowledge_bm25_delete AFTER DELETE ON knowledge_documentchunk
    REFERENCING OLD TABLE AS old_chunks FOR EACH STATEMENT EXECUTE FUNCTION knowledge_bm25_stats();
CREATE TRIGGER knowledge_bm25_truncate AFTER TRUNCATE ON knowledge_documentchunk
    FOR EACH STATEMENT EXECUTE FUNCTION knowledge_bm25_stats();
"""

REVERSE = """
DROP TRIGGER IF EXISTS knowledge_bm25_insert ON knowledge_documentchunk;
DROP TRIGGER IF EXISTS knowledge_bm25_update ON knowledge_documentchunk;
DROP TRIGGER IF EXISTS knowledge_bm25_delete ON knowledge_documentchunk;
DROP TRIGGER IF EXISTS knowledge_bm25_truncate ON knowledge_documentchunk;
DROP FUNCTION IF EXISTS knowledge_bm25_stats();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="Bm25Term",
            fields=[
                ("term", models.BigIntegerField(primary_key=True, serialize=False)),
                ("count", models.BigIntegerField(default=0)),
            ],
            options={
                "verbose_name": "BM25 term",
                "verbose_name_plural": "BM25 terms",
            },
        ),
        migrations.AddField(
            model_name="documentchunk",
            name="bm25_length",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="documentchunk",
            name="bm25_terms",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.BigIntegerField(), blank=True, null=True, size=None
            ),
        ),
        migrations.RunSQL(FUNCTION, REVERSE),
    ]
