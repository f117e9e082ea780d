from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("resilience_crm", "0002_circuit_control"),
    ]

    operations = [
        migrations.AddField(
            model_name="tierassignment",
            name="limits",
            field=models.JSONField(
                blank=True, default=dict,
                help_text="Rates for this user that replace the tier's, per op class.",
            ),
        ),
    ]
