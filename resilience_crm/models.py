"""Durable records: circuits and their audit trail, metrics, tiers, and queued writes."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone

from resilience_crm.breakers import machine
from resilience_crm.breakers.config import breaker_errors
from resilience_crm.constants import OP_CLASSES
from resilience_crm.ratelimit.rates import INVALID_RATE, limits_errors

STATE_CHOICES = [(state, state.replace("_", " ")) for state in machine.STATES]


class CircuitQuerySet(models.QuerySet["Circuit"]):
    def live_seed(self, name: str) -> dict[str, Any]:
        """The live state to start ``name`` from when the shared store has lost it: the
        durable generation, forced state and overrides; a new circuit if there is no row."""
        circuit = self.filter(name=name).select_related("forced_by").first()
        return machine.new_state() if circuit is None else circuit.live_seed()


class Circuit(models.Model):
    """A circuit's configuration overrides, forced state and durable state.

    ``state`` and ``generation`` record the last transition; with the database store ``live``
    and ``version`` also hold the live state, changed only by compare-and-set.
    """

    name = models.CharField(max_length=200, unique=True)
    state = models.CharField(max_length=20, choices=STATE_CHOICES, default=machine.CLOSED)
    generation = models.BigIntegerField(default=0)
    config = models.JSONField(
        default=dict, blank=True,
        help_text="Breaker settings that override RESILIENCE_CRM for this circuit.",
    )
    forced_state = models.CharField(max_length=20, choices=STATE_CHOICES, blank=True)
    forced_reason = models.CharField(max_length=500, blank=True)
    forced_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="+",
    )
    forced_until = models.DateTimeField(null=True, blank=True)
    pending = models.JSONField(
        default=dict, blank=True, editable=False,
        help_text="A manual change saved while the shared store was unreachable, applied to "
                  "every worker as soon as it is back.",
    )
    live = models.JSONField(default=dict, blank=True, editable=False)
    version = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects = CircuitQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        permissions = [
            ("reset_circuit", "Can reset circuits"),
            ("force_open_circuit", "Can force circuits open"),
            ("force_closed_circuit", "Can force circuits closed"),
            ("disable_circuit", "Can disable circuits"),
            ("change_circuit_config", "Can change circuits' breaker settings"),
        ]

    def __str__(self) -> str:
        return self.name

    def live_seed(self) -> dict[str, Any]:
        """This row as a live state (see :func:`resilience_crm.breakers.machine.new_state`):
        generations go
        on above the last recorded one, and a forced state that has not lapsed holds."""
        seed = machine.new_state()
        seed["gen"] = self.generation
        if self.config:
            seed["cfg"], seed["cv"] = json.dumps(self.config), 1
        until = self.forced_until
        if self.forced_state in machine.FORCEABLE and (until is None or until > timezone.now()):
            seed.update(state=self.forced_state, reason=self.forced_reason,
                        actor=str(self.forced_by or ""),
                        until=int(until.timestamp() * 1000) if until else 0)
            if self.forced_state == machine.FORCED_OPEN:
                seed["opened_at"] = int(self.updated_at.timestamp() * 1000)
        return seed

    def clean(self) -> None:
        if not isinstance(self.config, dict):
            raise ValidationError({"config": "Must be a JSON object of breaker settings."})
        errors = breaker_errors(self.config)
        if errors:
            raise ValidationError({"config": [f"{key} {message}" for key, message in errors]})


class CircuitEvent(models.Model):
    """One transition of one circuit: the audit trail, exactly one row per transition.

    ``source="local"`` marks a worker's own breaker while the shared store was down: its
    ``generation`` is that breaker's, and the event never moved the circuit's row."""

    class Source(models.TextChoices):
        BREAKER = "breaker", "breaker"
        ADMIN = "admin", "admin"
        COMMAND = "command", "command"
        LOCAL = "local", "local breaker (store unavailable)"

    # PROTECT: deleting a circuit must not erase its audit trail.
    circuit = models.ForeignKey(Circuit, on_delete=models.PROTECT, related_name="events")
    generation = models.BigIntegerField()
    from_state = models.CharField(max_length=20, choices=STATE_CHOICES)
    to_state = models.CharField(max_length=20, choices=STATE_CHOICES)
    reason = models.CharField(max_length=500, blank=True)
    source = models.CharField(max_length=20, choices=Source.choices, default=Source.BREAKER)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["-created_at", "-generation"]
        constraints = [
            # One row per transition of the cluster's breaker. A worker's local breaker
            # (source "local") numbers its own generations, so its events stand apart.
            models.UniqueConstraint(
                fields=["circuit", "generation", "from_state", "to_state"],
                condition=~models.Q(source="local"),
                name="resilience_event_once",
            )
        ]
        indexes = [
            models.Index(fields=["circuit", "-created_at"]),
            models.Index(fields=["to_state"]),
        ]

    def __str__(self) -> str:
        return f"{self.circuit}: {self.from_state} -> {self.to_state} (#{self.generation})"


class CircuitMetric(models.Model):
    """Call counts of one circuit over one minute."""

    circuit = models.ForeignKey(Circuit, on_delete=models.CASCADE, related_name="metrics")
    bucket = models.DateTimeField(help_text="The start of the minute.")
    calls = models.PositiveBigIntegerField(default=0)
    successes = models.PositiveBigIntegerField(default=0)
    failures = models.PositiveBigIntegerField(default=0)
    slow = models.PositiveBigIntegerField(default=0)
    timeouts = models.PositiveBigIntegerField(default=0)
    rejected = models.PositiveBigIntegerField(default=0)
    fallbacks = models.PositiveBigIntegerField(default=0)
    latency_sum_ms = models.FloatField(default=0)
    latency_max_ms = models.FloatField(default=0)

    class Meta:
        ordering = ["-bucket"]
        constraints = [
            models.UniqueConstraint(fields=["circuit", "bucket"], name="resilience_metric_bucket")
        ]

    def __str__(self) -> str:
        return f"{self.circuit} @ {self.bucket:%Y-%m-%d %H:%M}"


class SpoolReceipt(models.Model):
    """A batch of events or metrics that waited in the shared store's spool and has been
    written (``resilience_crm.spool``): written in the same transaction as the batch,
    so a
    second writer of the same batch (another process, or one that died before taking the
    batch off the spool) writes nothing."""

    batch = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(db_default=Now())

    def __str__(self) -> str:
        return self.batch


def clean_limits(limits: Any) -> None:
    """``ValidationError`` on ``limits`` for each op class or rate that is wrong (the one
    validation, ``rates.limits_errors``, the checks use too)."""
    if not isinstance(limits, dict):
        raise ValidationError({"limits": "Must be a JSON object of op class -> rate."})
    problems = [f"{op_class}: {message}" if kind == INVALID_RATE else f"{message}."
                for op_class, kind, message in limits_errors(limits, OP_CLASSES)]
    if problems:
        raise ValidationError({"limits": problems})


class Tier(models.Model):
    """A rate-limit tier: ``limits`` maps op class to a rate or a list of rates."""

    name = models.CharField(max_length=50, unique=True)
    limits = models.JSONField(default=dict, blank=True)
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        clean_limits(self.limits)


class TierAssignment(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="resilience_tier"
    )
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="assignments")
    limits = models.JSONField(
        default=dict, blank=True,
        help_text="Rates for this user that replace the tier's, per op class.",
    )

    def __str__(self) -> str:
        return f"{self.user} -> {self.tier}"

    def clean(self) -> None:
        clean_limits(self.limits)


class QueuedWrite(models.Model):
    """A write taken while its circuit was open, replayed once by its handler."""

    class State(models.TextChoices):
        PENDING = "pending", "pending"
        APPLYING = "applying", "applying"
        APPLIED = "applied", "applied"
        FAILED = "failed", "failed"
        DEAD = "dead", "dead letter"

    name = models.CharField(max_length=200, help_text="The write handler's name.")
    idempotency_key = models.CharField(max_length=255, unique=True)
    payload = models.JSONField(default=dict)
    payload_hash = models.CharField(max_length=64)
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)
    applied_at = models.DateTimeField(null=True, blank=True)
    entity = models.CharField(
        max_length=200, blank=True,
        help_text="Writes of one entity are replayed in the order they were submitted.",
    )
    result = models.JSONField(null=True, blank=True, help_text="What the handler returned.")
    lease_owner = models.CharField(max_length=64, blank=True, editable=False)
    lease_until = models.DateTimeField(
        null=True, blank=True, editable=False,
        help_text="A replayer holds the row until then; after it, another may take it over.",
    )

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["state", "created_at"]),
                   models.Index(fields=["entity", "id"], name="resilience_qw_entity")]

    def __str__(self) -> str:
        return f"{self.name} [{self.idempotency_key}] {self.state}"

    @classmethod
    def counts(cls, using: str | None = None) -> dict[str, int]:
        """How many rows are in each state (every state, zeros included): one query."""
        rows = dict(cls.objects.using(using).values_list("state")
                    .annotate(n=models.Count("pk")).order_by())
        return {state: rows.get(state, 0) for state in cls.State.values}
