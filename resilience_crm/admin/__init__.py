"""The Django admin: circuits with audited reset and forced states, events, metrics, tiers
(``modeladmins.py``, start there; the circuit actions' shared part is ``actions.py``; what a
circuit's page and card show besides the form, ``circuit_page.py``), the writes'
idempotency records and dead letters (``writes.py``), the dashboard (``dashboard.py``,
drawn by ``charts.py``), incidents grouped from the transitions (``incidents.py``) and the
state badges (``badges.py``). Nothing imports the admin."""

from resilience_crm.admin import modeladmins, writes  # noqa: F401  (register the ModelAdmins)
