"""The app's own signal receivers, connected in ``AppConfig.ready``."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_login_failed
from django.core.signals import request_finished, setting_changed
from django.db import router, transaction
from django.db.models.signals import post_migrate, post_save
from django.dispatch import receiver

from resilience_crm import flusher
from resilience_crm.breakers import control, events, machine, registry
from resilience_crm.conf import settings
from resilience_crm.constants import SETTING_NAME
from resilience_crm.observability import alerts, drills
from resilience_crm.provider import handlers, replay
from resilience_crm.ratelimit import auth_failures, limiter, principals, tiers
from resilience_crm.signals import circuit_transition, shared_store_recovered


def forget_settings() -> None:
    """Forget everything this process built from settings: the settings themselves, the
    breakers and their store, the limiter's store and plans, cached tiers, the principals'
    options and the credentials that passed authentication. Each is built again, from the
    settings of the moment, on its next use."""
    settings.reload()
    registry.clear()
    limiter.clear()
    tiers.clear()
    principals.forget()
    auth_failures.forget()


@receiver(setting_changed, dispatch_uid="resilience_crm.settings_changed")
def settings_changed(*, setting: str, **kwargs: Any) -> None:
    """Tests' ``override_settings``: the app's settings, caches and databases are read anew."""
    if setting in (SETTING_NAME, "CACHES", "DATABASES"):
        forget_settings()


@receiver(user_login_failed, dispatch_uid="resilience_crm.count_failed_login")
def count_failed_login(sender: Any, credentials: Any, request: Any = None,
                       **kwargs: Any) -> None:
    """A failed password login spends one of its address's ``AUTH_FAILURES``."""
    if request is not None:
        auth_failures.failed(request)


@receiver(circuit_transition, dispatch_uid="resilience_crm.replay_on_close")
def replay_on_close(sender: Any, name: str, to_state: str, local: bool = False,
                    **kwargs: Any) -> None:
    """A write circuit that closes again means the database is back: replay the write queue
    in the background."""
    if to_state == machine.CLOSED and name in handlers.circuits():
        replay.replay_in_background()


@receiver(circuit_transition, dispatch_uid="resilience_crm.record_event")
def record_event(sender: Any, name: str, from_state: str, to_state: str, generation: int,
                 reason: str = "", actor: Any = None, local: bool = False, **kwargs: Any) -> None:
    # A local breaker's transition is always recorded as local, manual or not: its
    # generation is the worker's own, not the cluster's.
    source = events.LOCAL if local else kwargs.get("source") or ("admin" if actor else "breaker")
    if not local:  # a local breaker's store is down: no drill record to read
        reason = drills.tag(reason)
    events.record_transition(name, from_state, to_state, generation, reason,
                             actor=actor if getattr(actor, "pk", None) else None,
                             at=kwargs.get("at"), source=source)


@receiver(circuit_transition, dispatch_uid="resilience_crm.send_alert")
def send_alert(sender: Any, name: str, from_state: str, to_state: str, generation: int,
               reason: str = "", local: bool = False, actor: Any = None,
               **kwargs: Any) -> None:
    alerts.send_alert(name, from_state, to_state, generation, reason, local=local, actor=actor,
                      source=kwargs.get("source"))


@receiver(shared_store_recovered, dispatch_uid="resilience_crm.store_recovered")
def store_recovered(sender: Any, **kwargs: Any) -> None:
    """The shared store is back: allow the next outage its local alert, and apply the manual
    changes operators made while it was down."""
    alerts.store_recovered()
    control.apply_pending()


@receiver(post_migrate, dispatch_uid="resilience_crm.create_rows")
def create_rows(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """A row for every configured circuit and tier; existing rows, and edits, are kept. Only
    on the database the app's tables live on (``DATABASE_ALIAS``, through the router)."""
    if sender.name != "resilience_crm":
        return
    from resilience_crm.models import Circuit, Tier

    if not isinstance(settings.TIERS, dict):
        return
    for model in (Circuit, Tier):
        if not router.allow_migrate_model(using, model):
            return
    for name in settings.circuit_names():
        Circuit.objects.using(using).get_or_create(name=name)
    for name, limits in settings.TIERS.items():
        Tier.objects.using(using).get_or_create(
            name=name, defaults={"limits": limits if isinstance(limits, dict) else {}}
        )


@receiver(post_save, sender="resilience_crm.Circuit", dispatch_uid="resilience_crm.config_saved")
def config_saved(sender: Any, instance: Any, created: bool = False, update_fields: Any = None,
                 **kwargs: Any) -> None:
    """A circuit's overrides were saved: hand them to every worker through the store."""
    if created and not instance.config:
        return
    if update_fields is None or "config" in update_fields:
        name, overrides = instance.name, dict(instance.config or {})
        transaction.on_commit(lambda: control.push_config(name, overrides),
                              using=kwargs.get("using"))


@receiver(request_finished, dispatch_uid="resilience_crm.after_response")
def after_response(sender: Any, **kwargs: Any) -> None:
    """Make sure this process's background flusher runs; it writes events and metrics on its
    own connection, so the request never waits on the database for them."""
    flusher.start()
