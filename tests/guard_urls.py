"""Views that know nothing of the app, for the query guard's tests: a plain Django view, a
DRF view with DRF's stock token authentication, and the admin."""

from django.contrib import admin
from django.contrib.auth.models import User
from django.http import HttpRequest, JsonResponse
from django.urls import path
from rest_framework.authentication import TokenAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


def plain(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"users": User.objects.count()})


class Users(APIView):
    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]
    throttle_classes: list = []

    def get(self, request: Request) -> Response:
        return Response({"users": User.objects.count()})


urlpatterns = [
    path("plain/", plain, name="guard-plain"),
    path("api/users/", Users.as_view(), name="guard-users"),
    path("admin/", admin.site.urls),
]
