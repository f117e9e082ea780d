from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("resilience_crm", "0004_event_identity"),
    ]

    operations = [
        migrations.AddField(
            model_name="queuedwrite",
            name="entity",
            field=models.CharField(blank=True, help_text="Writes of one entity are replayed in the order they were submitted.", max_length=200),
        ),
        migrations.AddField(
            model_name="queuedwrite",
            name="result",
            field=models.JSONField(blank=True, help_text="What the handler returned.", null=True),
        ),
        migrations.AddField(
            model_name="queuedwrite",
            name="lease_owner",
            field=models.CharField(blank=True, editable=False, max_length=64),
        ),
        migrations.AddField(
            model_name="queuedwrite",
            name="lease_until",
            field=models.DateTimeField(blank=True, editable=False, help_text="A replayer holds the row until then; after it, another may take it over.", null=True),
        ),
        migrations.AddIndex(
            model_name="queuedwrite",
            index=models.Index(fields=["entity", "id"], name="resilience_qw_entity"),
        ),
    ]
