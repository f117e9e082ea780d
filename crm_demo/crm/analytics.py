"""The analytics summary: the CRM in figures, a cached read through ``protected`` so it is
served stale, labelled, while the database is down."""

from datetime import timedelta
from typing import Any

from django.db.models import Count
from django.db.models.functions import TruncDate
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from crm_demo.crm.models import Agent, Contact, Conversation, Message
from resilience_crm.drf import FallbackHeadersMixin
from resilience_crm.provider.facade import protected

#: Days of ``messages_per_day`` in the analytics summary, today included.
SUMMARY_DAYS = 7


def summarize() -> dict[str, Any]:
    """Counts for the analytics summary: one query per figure, grouped in the database."""
    today = timezone.now().date()
    first = today - timedelta(days=SUMMARY_DAYS - 1)
    per_day = dict(
        Message.objects.filter(created_at__date__gte=first)
        .annotate(day=TruncDate("created_at")).values_list("day")
        .annotate(n=Count("id")).values_list("day", "n"))
    return {
        "contacts": Contact.objects.count(),
        "conversations_by_status": {
            **{choice: 0 for choice in Conversation.Status.values},
            **dict(Conversation.objects.order_by().values_list("status")
                   .annotate(n=Count("id")).values_list("status", "n")),
        },
        "agents_by_kind": {
            **{choice: 0 for choice in Agent.Kind.values},
            **dict(Agent.objects.order_by().values_list("kind")
                   .annotate(n=Count("id")).values_list("kind", "n")),
        },
        "messages_per_day": [
            {"date": day.isoformat(), "messages": per_day.get(day, 0)}
            for day in (first + timedelta(days=n) for n in range(SUMMARY_DAYS))
        ],
        "generated_at": timezone.now().isoformat(),
    }


class AnalyticsSummary(FallbackHeadersMixin, APIView):
    """``GET`` -> the CRM in figures, cached (``FALLBACK_TTL``) and served stale, labelled,
    while the database is down."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses=inline_serializer("AnalyticsSummary", {
        "contacts": serializers.IntegerField(),
        "conversations_by_status": serializers.DictField(child=serializers.IntegerField()),
        "agents_by_kind": serializers.DictField(child=serializers.IntegerField()),
        "messages_per_day": inline_serializer("MessagesOnDay", {
            "date": serializers.DateField(), "messages": serializers.IntegerField(),
        }, many=True),
        "generated_at": serializers.DateTimeField(),
    }))
    def get(self, request: Request) -> Response:
        return Response(protected.read("analytics:summary", summarize))
