"""The database limiter store's table and its one function (PostgreSQL only).

``resilience_crm_ratelimit`` holds one narrow row per key and limit: the key, its TAT (the
moment its bucket is full again, in microseconds) and when it last refused. It is UNLOGGED:
no write-ahead log, so a decision costs no WAL flush; a crash or failover empties it, which
resets the limits (every bucket full), and no other data is lost. ``resilience_crm_gcra``
decides every limit of a request in one call: a port of ``ratelimit/gcra.py`` and
``ratelimit/stores/gcra.lua``, see ``ratelimit/stores/database.py``.

On other databases this migration does nothing (system check E037 refuses the database
store there).
"""

from django.db import migrations

TABLE = """
CREATE UNLOGGED TABLE IF NOT EXISTS resilience_crm_ratelimit (
    tat bigint NOT NULL,
    refused bigint,
    key text COLLATE "C" NOT NULL PRIMARY KEY
) WITH (fillfactor = 80)
"""

# Rows are locked in key order (the INSERT below takes them sorted), so two requests that
# share keys never wait on each other in a circle. ``ON CONFLICT ... DO UPDATE ... WHERE
# false`` locks an existing row without writing a new version of it; a missing row is
# inserted (tat 0: "absent") and so locked as well. Each later statement of the function sees
# what the requests it waited for committed (READ COMMITTED takes a snapshot per statement).
FUNCTION = """
CREATE OR REPLACE FUNCTION resilience_crm_gcra(
    keys text[], intervals bigint[], tolerances bigint[], shadows boolean[], cost bigint,
    now_us bigint
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    n integer := cardinality(keys);
    at_us bigint := coalesce(now_us, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
    stored bigint[];
    allowed boolean := true;
    reply bigint[];
    cur bigint;
    new_at bigint;
    emission bigint;
    tolerance bigint;
BEGIN
    IF n = 1 THEN
        -- One limit (most requests): one row, so no lock order to keep. Admitted, it is a
        -- single UPDATE (re-checked on the newest row when another request changed it).
        emission := intervals[1];
        tolerance := tolerances[1];
        IF NOT shadows[1] THEN
            UPDATE resilience_crm_ratelimit SET tat = greatest(tat, at_us) + emission * cost
                WHERE key = keys[1]
                AND greatest(tat, at_us) + emission * cost - at_us <= tolerance
                RETURNING tat INTO new_at;
            IF FOUND THEN
                RETURN ARRAY[1, 1, (tolerance - (new_at - at_us)) / emission, new_at - at_us, 0];
            END IF;
        END IF;
        SELECT greatest(tat, at_us) INTO cur FROM resilience_crm_ratelimit
            WHERE key = keys[1] FOR UPDATE;
        IF FOUND THEN
            new_at := cur + emission * cost;
            IF new_at - at_us > tolerance THEN
                IF NOT shadows[1] THEN
                    UPDATE resilience_crm_ratelimit SET refused = at_us WHERE key = keys[1];
                END IF;
                RETURN ARRAY[CASE WHEN shadows[1] THEN 1 ELSE 0 END, 0,
                             greatest(0, (tolerance - (cur - at_us)) / emission), cur - at_us,
                             new_at - at_us - tolerance];
            END IF;
            UPDATE resilience_crm_ratelimit SET tat = new_at WHERE key = keys[1];
            RETURN ARRAY[1, 1, (tolerance - (new_at - at_us)) / emission, new_at - at_us, 0];
        END IF;
        -- No row yet: the general way below inserts it.
    END IF;
    INSERT INTO resilience_crm_ratelimit AS r (tat, key)
        SELECT DISTINCT 0, k FROM unnest(keys) AS k ORDER BY 2
        ON CONFLICT (key) DO UPDATE SET tat = r.tat WHERE false;
    SELECT array_agg(greatest(r.tat, at_us) ORDER BY u.i) INTO stored
        FROM unnest(keys) WITH ORDINALITY AS u(k, i)
        JOIN resilience_crm_ratelimit AS r ON r.key = u.k;
    IF coalesce(cardinality(stored), 0) <> n THEN
        RAISE EXCEPTION 'resilience_crm_gcra: % keys, % rows', n, cardinality(stored);
    END IF;
    FOR i IN 1..n LOOP
        IF stored[i] + intervals[i] * cost - at_us > tolerances[i] AND NOT shadows[i] THEN
            allowed := false;
        END IF;
    END LOOP;
    reply := ARRAY[CASE WHEN allowed THEN 1 ELSE 0 END];
    FOR i IN 1..n LOOP
        emission := intervals[i];
        tolerance := tolerances[i];
        cur := stored[i];
        new_at := cur + emission * cost;
        IF new_at - at_us > tolerance THEN
            reply := reply || ARRAY[0, greatest(0, (tolerance - (cur - at_us)) / emission),
                                    cur - at_us, new_at - at_us - tolerance];
            IF NOT shadows[i] THEN
                UPDATE resilience_crm_ratelimit SET refused = at_us WHERE key = keys[i];
            END IF;
        ELSIF allowed THEN
            UPDATE resilience_crm_ratelimit SET tat = new_at WHERE key = keys[i];
            reply := reply || ARRAY[1, (tolerance - (new_at - at_us)) / emission,
                                    new_at - at_us, 0];
        ELSE
            reply := reply || ARRAY[1, greatest(0, (tolerance - (cur - at_us)) / emission),
                                    cur - at_us, 0];
        END IF;
    END LOOP;
    RETURN reply;
END
$$
"""


class PostgresSQL(migrations.RunSQL):
    """``RunSQL`` on PostgreSQL; nothing on any other database."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):

    dependencies = [
        ("resilience_crm", "0006_spool_receipt"),
    ]

    operations = [
        PostgresSQL(TABLE, "DROP TABLE IF EXISTS resilience_crm_ratelimit"),
        PostgresSQL(FUNCTION,
                    "DROP FUNCTION IF EXISTS resilience_crm_gcra("
                    "text[], bigint[], bigint[], boolean[], bigint, bigint)"),
    ]
