"""Views for ``ATOMIC_REQUESTS``: ones that call ``protected``, marked and not, for the check;
one that does not call it; one that saves a row, then refuses with a problem."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from rest_framework import routers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from resilience_crm.drf import FallbackHeadersMixin
from resilience_crm.exceptions import IdempotencyConflict
from resilience_crm.models import Tier
from resilience_crm.provider.facade import protected
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


class ReportViewSet(viewsets.ViewSet):
    def list(self, request: Request) -> Response:
        return Response(protected.read("reports", list))


class MixedReportViewSet(FallbackHeadersMixin, ReportViewSet):
    pass


router = routers.SimpleRouter()
router.register("reports", ReportViewSet, basename="report")
router.register("mixed-reports", MixedReportViewSet, basename="mixed-report")


class SavesThenRefuses(APIView):
    authentication_classes: list[type] = []
    permission_classes: list[type] = []

    def post(self, request: Request) -> Response:
        Tier.objects.create(name="half-done", limits={})
        raise IdempotencyConflict


urlpatterns = [
    path("contacts/<int:pk>/", contact),
    path("marked/<int:pk>/", marked_contact),
    path("plain/", plain),
    path("report/", Report.as_view()),
    path("mixed/", MixedReport.as_view()),
    path("refuses/", SavesThenRefuses.as_view()),
    path("", include(router.urls)),
]
