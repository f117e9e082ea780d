"""Admin for the idempotency record of every write submitted through ``protected.submit``:
applied at once, queued while a circuit was open, replayed, failed or dead letters. Only the
failed ones and dead letters can be touched: queued for replay again."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html

import resilience_crm.admin.badges as badges
from resilience_crm.models import QueuedWrite

#: What the list is, said on it (the model's name says only half).
TITLE = "Writes and their idempotency records"
INTRO = ("Every write submitted with an idempotency key: applied at once, queued while its "
         "circuit was open (then replayed), failed, or a dead letter. A repeated request with "
         "the same key gets the answer kept here.")


@admin.register(QueuedWrite)
class QueuedWriteAdmin(admin.ModelAdmin):
    list_display = ["created_at", "name", "client_key", "state_badge", "attempts", "applied_at"]
    list_filter = ["state", "name"]
    search_fields = ["idempotency_key", "name", "last_error"]
    date_hierarchy = "created_at"
    readonly_fields = ["name", "idempotency_key", "payload", "payload_hash", "state", "attempts",
                       "last_error", "entity", "result", "created_at", "updated_at",
                       "applied_at"]
    actions = ["requeue"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def changelist_view(self, request: HttpRequest,
                        extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra = {"title": TITLE, "intro": INTRO, **(extra_context or {})}
        return super().changelist_view(request, extra)

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: QueuedWrite) -> str:
        return badges.write_badge(obj.state)

    @admin.display(description="idempotency key", ordering="idempotency_key")
    def client_key(self, obj: QueuedWrite) -> str:
        """The key the client sent, without the ``<user>:<handler>:`` scope an API puts in
        front of it (the whole key is the cell's tooltip)."""
        return format_html('<span title="{}">{}</span>', obj.idempotency_key,
                           client_key(obj.idempotency_key, obj.name))

    @admin.action(description="Queue selected failed writes and dead letters for replay again",
                  permissions=["change"])
    def requeue(self, request: HttpRequest, queryset: QuerySet[QueuedWrite]) -> None:
        requeued = 0
        for write in queryset.filter(state__in=[QueuedWrite.State.FAILED,
                                                QueuedWrite.State.DEAD]):
            write.state, write.attempts = QueuedWrite.State.PENDING, 0
            write.save(update_fields=["state", "attempts", "updated_at"])
            self.log_change(request, write, "Queued again for replay.")
            requeued += 1
        skipped = queryset.count() - requeued
        self.message_user(
            request,
            f"Queued {requeued} write(s) again." + (
                f" Skipped {skipped} that were not failed or dead." if skipped else ""),
            messages.SUCCESS if requeued else messages.WARNING,
        )


def client_key(key: str, handler: str) -> str:
    """``"7:contacts.create:abc"`` -> ``"abc"``: what follows the handler's name, when the
    key is scoped by it; the key as it is otherwise."""
    scope = f":{handler}:"
    at = key.find(scope) if handler else -1
    return key[at + len(scope):] if at >= 0 and key[at + len(scope):] else key
