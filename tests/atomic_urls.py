"""Views for the ``ATOMIC_REQUESTS`` check: ones that call ``protected``, marked and not, and
one that does not call it."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from resilience_crm.drf import FallbackHeadersMixin
from resilience_crm.provider import protected
from resilience_crm.transactions import non_atomic


def contact(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(protected.read(f"contact:{pk}", lambda: {"pk": pk}))


@non_atomic
def marked_contact(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(protected.read(f"contact:{pk}", lambda: {"pk": pk}))


def plain(request: HttpRequest) -> JsonResponse:
    return JsonResponse({})


class Report(APIView):
    def get(self, request: Request) -> Response:
        return Response(protected.rpc("report", dict))


class MixedReport(FallbackHeadersMixin, Report):
    pass


urlpatterns = [
    path("contacts/<int:pk>/", contact),
    path("marked/<int:pk>/", marked_contact),
    path("plain/", plain),
    path("report/", Report.as_view()),
    path("mixed/", MixedReport.as_view()),
]
