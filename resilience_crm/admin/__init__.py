"""The Django admin: circuits with audited reset and forced states, events, metrics, tiers,
dead letters (``modeladmins.py``, start there; the circuit actions' shared part is
``actions.py``), and the dashboard (``dashboard.py``, drawn by
``charts.py``). Nothing imports the admin."""

from resilience_crm.admin import modeladmins  # noqa: F401  (registers the ModelAdmins)
