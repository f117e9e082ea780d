"""Admin for circuits (with audited manual control), their events and metrics, tiers and
queued writes.

The four circuit actions each need their own permission. Each one steps the shared store, so
every worker sees the change within ``SNAPSHOT_TTL``; the transition leaves a
``CircuitEvent`` naming the acting user, and the action leaves a ``LogEntry``. While the
shared store is unreachable an action is saved and reported as pending (it reaches every
worker when the store is back), or refused when the database cannot save it either.
Editing a circuit's breaker settings needs ``change_circuit_config`` and leaves a
``LogEntry`` with the diff; a circuit with events cannot be deleted (they are its audit
trail).
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import router, transaction
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

import resilience_crm.admin.actions as circuit_actions
import resilience_crm.admin.circuit_page as circuit_page
import resilience_crm.admin.dashboard as dashboard
import resilience_crm.admin.incidents as incidents
from resilience_crm.admin.badges import STATE_COLOURS, state_badge
from resilience_crm.breakers import machine, registry
from resilience_crm.conf import settings
from resilience_crm.exceptions import StoreUnavailable
from resilience_crm.models import (
    Circuit,
    CircuitEvent,
    CircuitMetric,
    Tier,
    TierAssignment,
)
from resilience_crm.ratelimit import principals
from resilience_crm.ratelimit.standing import standing

logger = logging.getLogger("resilience_crm.admin.modeladmins")

#: Seconds between the dashboard's reloads of itself (its charts), and between its updates
#: in place of the circuits' states and the queue.
DASHBOARD_REFRESH = 60
DASHBOARD_LIVE = 3

@admin.register(Circuit)
class CircuitAdmin(admin.ModelAdmin):
    list_display = ["name", "live_state", "forced", "overridden", "pending_change",
                    "durable_state", "updated_at"]
    list_filter = ["state", "forced_state"]
    search_fields = ["name"]
    readonly_fields = ["live_panel", "state", "generation", "forced_state", "forced_reason",
                       "forced_by", "forced_until", "recent_events", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "live_panel", "config"]}),
        ("Durable record", {"fields": ["state", "generation", "recent_events"]}),
        ("Forced state", {"fields": ["forced_state", "forced_reason", "forced_by",
                                     "forced_until"]}),
        ("Timestamps", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]
    action_form = circuit_actions.CircuitActionForm
    actions = ["reset", "force_open", "force_closed", "disable"]
    change_list_template = "admin/resilience_crm/circuit/change_list.html"
    change_form_template = "admin/resilience_crm/circuit/change_form.html"

    # Rows come from settings (post_migrate) and from code that names a circuit; their
    # events (PROTECT) are the audit trail. Only a row with neither may be deleted.

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None or obj.name in settings.circuit_names() or obj.events.exists():
            return False
        return super().has_delete_permission(request, obj)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """The form, and under it the configuration in force, the buttons and the incidents;
        a button's POST runs its audited action on this circuit and comes back here."""
        obj = self.get_object(request, object_id)
        if obj is None:
            return super().change_view(request, object_id, form_url, extra_context)
        if request.method == "POST" and request.POST.get("action"):
            self.steer_one(request, obj.pk)
            return redirect(request.get_full_path())
        live = self._snapshot(obj).get("state", "unknown")
        extra = {
            "config_in_force": circuit_page.config_in_force(obj.name, obj.config),
            "hold": circuit_page.hold(obj.name, obj, live),
            "buttons": circuit_page.buttons(set(self.get_actions(request)), live),
            "incidents": incidents.recent([obj.name], limit=20),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra)

    def steer_one(self, request: HttpRequest, pk: Any) -> None:
        """A button on a circuit's page or card: the audited action, with a reason required."""
        if not request.POST.get("reason", "").strip():
            self.message_user(request, "Nothing changed: give a reason (it is kept in the "
                              "audit trail).", messages.ERROR)
            return
        self.response_action(request, queryset=self.get_queryset(request).filter(pk=pk))

    def get_urls(self) -> list[Any]:
        dashboard = path("dashboard/", self.admin_site.admin_view(self.dashboard_view),
                         name="resilience_crm_dashboard")
        live = path("dashboard/live.json", self.admin_site.admin_view(self.dashboard_live),
                    name="resilience_crm_dashboard_live")
        return [dashboard, live, *super().get_urls()]

    def dashboard_live(self, request: HttpRequest) -> HttpResponse:
        """What the dashboard updates in place between reloads: each circuit's state and
        the queue (a GET with no parameters; the view permission)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        return JsonResponse(dashboard.live())

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """Every circuit at a glance, with charts, transitions, queued writes and the
        reset and force buttons (which run the same audited actions as the list)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            self.steer_one(request, request.POST.get("_selected_action"))
            return redirect(request.get_full_path())
        allowed = set(self.get_actions(request))
        data = dashboard.context()
        rows = {c.name: c for c in Circuit.objects.select_related("forced_by")}
        for panel in data["panels"]:
            row, state = rows.get(panel.name), panel.snapshot["state"]
            panel.pk = row.pk if row else None
            panel.badge = state_badge(state)
            panel.hold = circuit_page.hold(panel.name, row, state)
            panel.buttons = circuit_page.buttons(allowed, state)
        context = {
            **self.admin_site.each_context(request), **data,
            "title": "Resilience dashboard", "opts": self.model._meta,
            "refresh_seconds": DASHBOARD_REFRESH, "live_seconds": DASHBOARD_LIVE,
            "state_colours": STATE_COLOURS,
        }
        return TemplateResponse(request, "admin/resilience_crm/dashboard.html", context)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields.append("name")
        if not request.user.has_perm("resilience_crm.change_circuit_config"):
            fields.append("config")
        return fields

    def save_model(self, request: HttpRequest, obj: Circuit, form: Any, change: bool) -> None:
        before = Circuit.objects.filter(pk=obj.pk).values_list("config", flat=True).first()
        super().save_model(request, obj, form, change)
        diff = circuit_actions.config_diff(before or {}, obj.config or {})
        if not diff:
            return
        request._resilience_config_diff = diff  # type: ignore[attr-defined]  # for log_change

        def report() -> None:  # after config_saved's own on_commit has handed them out
            if "config" in (Circuit.objects.filter(pk=obj.pk)
                            .values_list("pending", flat=True).first() or {}):
                self.message_user(request, "The breaker settings are saved, but the shared "
                                  "store is unreachable: they reach every worker as soon as it "
                                  "is back.", messages.WARNING)

        transaction.on_commit(report, using=router.db_for_write(Circuit))

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        diff = getattr(request, "_resilience_config_diff", None)
        if diff and isinstance(message, list):
            request._resilience_config_diff = None  # type: ignore[attr-defined]
            message = f"Changed breaker settings: {diff}."
        return super().log_change(request, obj, message)

    # Columns.

    @admin.display(description="live state")
    def live_state(self, obj: Circuit) -> str:
        try:  # a read, never a step: the changelist shows every circuit on each load
            state = registry.get_breaker(obj.name).peek()
        except Exception:  # the admin must render even when the store and fallback both fail
            logger.exception("Circuit %s: could not read the live state.", obj.name)
            return "unknown"
        return state_badge(state)

    @admin.display(description="last recorded", ordering="state")
    def durable_state(self, obj: Circuit) -> str:
        return f"{obj.state.replace('_', ' ')} #{obj.generation}"

    @admin.display(description="forced", ordering="forced_state")
    def forced(self, obj: Circuit) -> str:
        if not obj.forced_state:
            return "-"
        until = (f" until {timezone.localtime(obj.forced_until):%Y-%m-%d %H:%M}"
                 if obj.forced_until else "")
        return format_html('<span title="{}">{}{}</span>', obj.forced_reason,
                           obj.forced_state.replace("_", " "), until)

    @admin.display(description="pending")
    def pending_change(self, obj: Circuit) -> str:
        """A change saved while the shared store was unreachable, not yet in effect."""
        pending = obj.pending or {}
        parts = []
        if pending.get("action"):
            parts.append(str(pending["action"].get("state", "")).replace("_", " "))
        if pending.get("config"):
            parts.append("settings")
        return ", ".join(parts) or "-"

    @admin.display(description="overrides")
    def overridden(self, obj: Circuit) -> str:
        """The settings saved in the admin over those in ``RESILIENCE_CRM``, or ``none``."""
        config = obj.config if isinstance(obj.config, dict) else {}
        return ", ".join(sorted(config)) or "none"

    @admin.display(description="live")
    def live_panel(self, obj: Circuit) -> str:
        if obj.pk is None:
            return "-"
        snap = self._snapshot(obj)
        if not snap:
            return "The store did not answer."
        rate = f"{snap['failure_rate']:.0%}"
        if snap["state"] == machine.OPEN and snap["retry_after"]:
            retry = f", next trial in {snap['retry_after']:.1f}s"
        elif snap["state"] in machine.FORCEABLE and snap["until"]:
            retry = f", until {timezone.localtime(snap['until']):%Y-%m-%d %H:%M:%S %Z}"
        else:
            retry = ""
        return format_html(
            "{} generation {} &middot; {} calls, {} failures ({}), {} slow in the window{}"
            " &middot; {} store",
            state_badge(snap["state"]), snap["generation"], snap["calls"], snap["failures"],
            rate, snap["slow"], retry, snap["store"],
        )

    @admin.display(description="events")
    def recent_events(self, obj: Circuit) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:resilience_crm_circuitevent_changelist")
        count = obj.events.count()
        return format_html('<a href="{}?{}">{} event{}</a>', url,
                           urlencode({"circuit__id__exact": obj.pk}), count,
                           "" if count == 1 else "s")

    def _snapshot(self, obj: Circuit) -> dict[str, Any]:
        try:
            return registry.get_breaker(obj.name).snapshot()
        except Exception:  # the admin must render even when the store and fallback both fail
            logger.exception("Circuit %s: could not read the live state.", obj.name)
            return {}

    # Actions, each behind its own permission.

    @admin.action(description="Reset selected circuits (close, forget counts)",
                  permissions=["reset"])
    def reset(self, request: HttpRequest, queryset: QuerySet[Circuit]) -> None:
        circuit_actions.steer_selected(self, request, queryset, machine.CLOSED)

    @admin.action(description="Force selected circuits open", permissions=["force_open"])
    def force_open(self, request: HttpRequest, queryset: QuerySet[Circuit]) -> None:
        circuit_actions.steer_selected(self, request, queryset, machine.FORCED_OPEN)

    @admin.action(description="Force selected circuits closed", permissions=["force_closed"])
    def force_closed(self, request: HttpRequest, queryset: QuerySet[Circuit]) -> None:
        circuit_actions.steer_selected(self, request, queryset, machine.FORCED_CLOSED)

    @admin.action(description="Disable selected circuits (let every call through, count none)",
                  permissions=["disable"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Circuit]) -> None:
        circuit_actions.steer_selected(self, request, queryset, machine.DISABLED)

    def has_reset_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("resilience_crm.reset_circuit")

    def has_force_open_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("resilience_crm.force_open_circuit")

    def has_force_closed_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("resilience_crm.force_closed_circuit")

    def has_disable_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("resilience_crm.disable_circuit")


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by the app; the admin shows them and nothing more."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(CircuitEvent)
class CircuitEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "circuit", "transition", "generation", "reason", "source",
                    "actor"]
    list_filter = ["to_state", "from_state", "source", "circuit"]
    list_select_related = ["circuit", "actor"]
    search_fields = ["circuit__name", "reason"]
    date_hierarchy = "created_at"

    @admin.display(description="transition")
    def transition(self, obj: CircuitEvent) -> str:
        return format_html("{} &rarr; {}", state_badge(obj.from_state), state_badge(obj.to_state))


@admin.register(CircuitMetric)
class CircuitMetricAdmin(ReadOnlyAdmin):
    list_display = ["bucket", "circuit", "calls", "successes", "failures", "slow", "timeouts",
                    "rejected", "fallbacks", "mean_latency", "latency_max_ms"]
    list_filter = ["circuit"]
    list_select_related = ["circuit"]
    date_hierarchy = "bucket"

    @admin.display(description="mean latency (ms)")
    def mean_latency(self, obj: CircuitMetric) -> str:
        return f"{obj.latency_sum_ms / obj.calls:.1f}" if obj.calls else "-"


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin):
    list_display = ["name", "limits_summary", "description", "users"]
    search_fields = ["name"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tier]:
        return super().get_queryset(request).annotate(user_count=Count("assignments"))

    @admin.display(description="limits")
    def limits_summary(self, obj: Tier) -> str:
        if not isinstance(obj.limits, dict):
            return "-"
        return "; ".join(
            f"{op}: {', '.join(rates) if isinstance(rates, list) else rates}"
            for op, rates in obj.limits.items()
        ) or "-"

    @admin.display(description="users", ordering="user_count")
    def users(self, obj: Any) -> int:
        return int(obj.user_count)


@admin.register(TierAssignment)
class TierAssignmentAdmin(admin.ModelAdmin):
    list_display = ["user", "tier"]
    list_filter = ["tier"]
    list_select_related = ["user", "tier"]
    raw_id_fields = ["user"]
    search_fields = ["user__username", "user__email"]
    readonly_fields = ["limits_now"]

    @admin.display(description="Limits now")
    def limits_now(self, obj: TierAssignment) -> str:
        """Why is this user limited? Each policy as the limiter's store has it now (the
        saved assignment's; edits apply once saved), as ``resilience_limits`` shows it."""
        if obj.pk is None:
            return "-"
        try:
            policies = standing(principals.of_user(obj.user))
        except StoreUnavailable as err:
            return f"The rate-limit store cannot be reached: {err.__cause__ or err}"
        if not policies:
            return "No limits apply."
        rows = format_html_join("", "<tr><td>{}</td><td>{}/{}s</td><td>{}</td><td>{}s</td>"
                                "<td>{}</td></tr>", (
            (p.policy, p.limit, f"{p.window:g}", p.remaining, f"{p.reset:.1f}",
             (p.last_refusal.isoformat(timespec="seconds") if p.last_refusal else "none")
             if p.recorded else "not recorded by this store") for p in policies))
        return format_html("<table><tr><th>policy</th><th>limit</th><th>remaining</th>"
                           "<th>reset in</th><th>last refusal</th></tr>{}</table>", rows)
