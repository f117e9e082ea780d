"""What operators see: health, OpenMetrics, alerts and alert rules.

``health.py`` serves ``/resilience/health/live`` and ``/ready`` (open it first),
``exposition.py`` the whole cluster's counters as OpenMetrics, ``alerts.py`` sends Sentry
events when a circuit opens and recovers, ``rules.py`` evaluates the alert rules, and
``drills.py`` marks an outage made on purpose (its events tagged, the rules quiet). The
counters they read are written by every feature through the shared modules at the top of the
package: ``resilience_crm.metrics`` (in-process counters and their per-minute rows),
``resilience_crm.flusher`` (the background writer) and ``resilience_crm.spool`` (what the
database cannot take yet). ``checks.py`` checks their settings. Arrows: observability ->
breakers and provider.
"""
