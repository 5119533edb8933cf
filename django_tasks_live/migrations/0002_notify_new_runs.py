"""PostgreSQL: the database announces new runs itself (LISTEN/NOTIFY wakes idle workers).

A statement-level trigger sends one ``pg_notify('tasks_live_new', <queue>)`` per queue
that received runs, at commit. It costs no round trip of its own on the enqueue path
(a separate ``SELECT pg_notify(...)`` did), and runs inserted by any means wake workers.
Other databases have nothing to do: their workers poll.
"""

from django.db import migrations

FUNCTION = "tasks_live_notify_new_runs"


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("django_tasks_live", "Run")._meta.db_table)
    schema_editor.execute(f"""
        CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('tasks_live_new', queue) FROM (SELECT DISTINCT queue FROM new_runs) AS q;
            RETURN NULL;
        END $$;
    """)
    schema_editor.execute(f"""
        CREATE TRIGGER {FUNCTION} AFTER INSERT ON {table}
        REFERENCING NEW TABLE AS new_runs FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}();
    """)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("django_tasks_live", "Run")._meta.db_table)
    schema_editor.execute(f"DROP TRIGGER IF EXISTS {FUNCTION} ON {table}")
    schema_editor.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")


class Migration(migrations.Migration):
    dependencies = [("django_tasks_live", "0001_initial")]

    operations = [migrations.RunPython(create_trigger, drop_trigger)]
