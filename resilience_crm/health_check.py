"""A django-health-check check for projects that already use that app (4.x).

    from health_check.views import HealthCheckView
    from resilience_crm.health_check import Circuits

    path("ht/", HealthCheckView.as_view(checks=[
        "health_check.checks.Database",
        (Circuits, {"critical": ("crm.read", "crm.write")}),
    ]))

It reads each circuit's state without stepping it, as ``/resilience/health/ready`` does: a
critical circuit that rejects calls (open or forced open) is *unavailable*; any other
circuit that rejects calls, or is half-open, or runs on a worker's own breaker because the
shared store is down, is a *warning*.
"""

from __future__ import annotations

import dataclasses
import datetime

from django.db import connections
from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable, ServiceWarning

from resilience_crm.breakers import machine, registry
from resilience_crm.conf import settings


@dataclasses.dataclass
class Circuits(HealthCheck):
    #: Circuits whose rejecting calls makes the service unavailable; () means all of them.
    critical: tuple[str, ...] = ()
    timeout = datetime.timedelta(seconds=1)

    def run(self) -> None:
        try:
            self._check()
        finally:
            connections.close_all()  # django-health-check runs this on a thread of its own

    def _check(self) -> None:
        troubled = {}
        for name in settings.circuit_names():
            breaker = registry.get_breaker(name)
            state = breaker.peek()
            if state in machine.REJECTING and (not self.critical or name in self.critical):
                raise ServiceUnavailable(f"circuit {name} is {state.replace('_', ' ')}")
            if state in machine.STRUGGLING or breaker.using_fallback:
                troubled[name] = "local breaker" if breaker.using_fallback else state
        if troubled:
            raise ServiceWarning(", ".join(f"{name}: {what}" for name, what in troubled.items()))
