"""Public signals."""

from django.dispatch import Signal

#: Sent exactly once per breaker transition across every process sharing the store, by the
#: process whose store step made the transition.
#:
#: ``sender``: the :class:`resilience_crm.breakers.breaker.Breaker` class.
#: ``name``: the circuit's name, e.g. ``"crm.read"``.
#: ``from_state`` / ``to_state``: state names, as in ``resilience_crm.breakers.machine.STATES``.
#: ``generation``: the circuit's generation after the transition; it grows by one per transition.
#: ``reason``: why, e.g. ``"consecutive_failures"``, ``"failure_rate"``, ``"reset"``.
#: ``actor``: the user (or ``None``) behind a manual reset or forced state.
#: ``source``: ``"admin"`` or ``"command"`` for a manual change made there, else ``None``.
#: ``local``: ``True`` when the shared store was unreachable and a worker's own per-process
#: breaker made it: such a transition is that worker's alone, outside the circuit's shared
#: generations (its event is recorded as local, and its alerts are tagged ``store: local``).
circuit_transition = Signal()

#: Sent in a worker process when its shared store answers again after an outage, by the
#: call that found it back. Manual changes that were saved while the store was down are
#: applied then.
#:
#: ``sender``: the :class:`resilience_crm.breakers.stores.failover.FailoverStore` class.
#: ``store``: the failover store instance.
shared_store_recovered = Signal()
