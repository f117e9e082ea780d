"""The demo API: contacts, agents, conversations and their messages, every data access
through ``protected``. Lists and details are cached reads (served stale, labelled, while the
database is down); creates go through ``protected.submit`` with the client's
``Idempotency-Key`` (202 and queued while the database is down); updates and deletes are
protected writes. The analytics summary is in ``analytics.py``, the CSV import in
``imports.py``."""

from functools import partial
from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import APIView

from crm_demo.crm import filters
from crm_demo.crm.models import Agent, Contact, Conversation, Message, Platform
from crm_demo.crm.schema import IDEMPOTENCY_KEY, REPLAYED_HEADER, idempotency_key
from crm_demo.crm.serializers import (
    AgentSerializer,
    ContactSerializer,
    ConversationSerializer,
    MessageSerializer,
    PlatformSerializer,
)
from resilience_crm.drf import FallbackHeadersMixin
from resilience_crm.provider.facade import protected


class ProtectedViewSet(FallbackHeadersMixin, viewsets.GenericViewSet):
    """List, create, retrieve, update and destroy through ``protected``."""

    permission_classes = [IsAuthenticated]
    filter_backends = [filters.FieldFilter]
    lookup_value_regex = r"\d+"
    #: Key space of this resource's cached reads; writes invalidate it.
    space = ""
    #: The write handler that creates one.
    create_handler = ""
    #: Query parameter -> model field for exact-match filters.
    filter_fields: dict[str, str] = {}
    #: Fields ``?search=`` looks in.
    search_fields: tuple[str, ...] = ()

    def list(self, request: Request) -> Response:
        query = filters.validate(request, self)
        page = protected.read(f"{self.space}:page:{query}", self._page)
        return Response({**page, "next": self._link(request, page["next"]),
                         "previous": self._link(request, page["previous"])})

    def _page(self) -> dict[str, Any]:
        """One page, with the numbers of its neighbours: the cached value is shared by every
        reader of the query, so it holds no link built from one reader's host."""
        results = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        page = self.paginator.page  # type: ignore[union-attr]
        return {"count": page.paginator.count,
                "next": page.next_page_number() if page.has_next() else None,
                "previous": page.previous_page_number() if page.has_previous() else None,
                "results": self.get_serializer(results, many=True).data}

    def _link(self, request: Request, number: int | None) -> str | None:
        """The link to page ``number`` of this request's own URL, as DRF's paginator builds
        it (page 1 without ``?page=``)."""
        if number is None:
            return None
        url = request.build_absolute_uri()
        param = self.paginator.page_query_param  # type: ignore[union-attr]
        if number == 1:
            return remove_query_param(url, param)
        return replace_query_param(url, param, number)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(protected.read(f"{self.space}:detail:{pk}", lambda: self._detail(pk)))

    def _detail(self, pk: str) -> dict[str, Any]:
        return dict(self.get_serializer(get_object_or_404(self.get_queryset(), pk=pk)).data)

    @extend_schema(parameters=[IDEMPOTENCY_KEY])
    def create(self, request: Request) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return self._submit(request, self.create_handler, dict(serializer.validated_data))

    def _submit(self, request: Request, handler: str, payload: dict[str, Any],
                entity: str = "") -> Response:
        key = idempotency_key(request)
        receipt = protected.submit(handler, payload, entity=entity,
                                   idempotency_key=f"{request.user.pk}:{handler}:{key}")
        # A repeat gives the first answer back, and says so (the repeat is a request like
        # any other: it spends the client's write budget).
        replayed = {REPLAYED_HEADER: "true"} if receipt.replayed else {}
        if receipt.queued:
            return Response({"status": "queued", "idempotency_key": key},
                            status=status.HTTP_202_ACCEPTED, headers=replayed)
        return Response(receipt.result, status=status.HTTP_201_CREATED,
                        headers={"Idempotency-Key": key, **replayed})

    def update(self, request: Request, pk: str, partial: bool = False) -> Response:
        serializer = self.get_serializer(data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        changes = serializer.validated_data

        def load() -> Any:
            instance = get_object_or_404(self.get_queryset().select_for_update(), pk=pk)
            self._check_related(changes)
            for field, value in changes.items():
                setattr(instance, field, value)
            return instance

        # The save is the transaction's last statement: the COMMIT goes with it.
        serializer.instance = protected.write(f"{self.space}:detail:{pk}", load,
                                              then=lambda instance: instance.save())
        return Response(serializer.data)  # the validating serializer shows it, as DRF's does

    def partial_update(self, request: Request, pk: str) -> Response:
        return self.update(request, pk, partial=True)

    def destroy(self, request: Request, pk: str) -> Response:
        def apply() -> None:
            get_object_or_404(self.get_queryset(), pk=pk).delete()

        protected.write(f"{self.space}:detail:{pk}", apply)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _check_related(self, changes: dict[str, Any]) -> None:
        """Foreign keys are plain ids: make sure they exist before saving them."""


class ContactViewSet(ProtectedViewSet):
    """People the CRM talks to."""

    queryset = Contact.objects.all()
    serializer_class = ContactSerializer
    space = "contacts"
    create_handler = "contacts.create"
    filter_fields = {"company": "company", "email": "email"}
    search_fields = ("name", "email", "company")


class AgentViewSet(ProtectedViewSet):
    """Who answers: AI or human agents."""

    queryset = Agent.objects.all()
    serializer_class = AgentSerializer
    space = "agents"
    create_handler = "agents.create"
    filter_fields = {"kind": "kind"}
    search_fields = ("name", "email")


class ConversationViewSet(ProtectedViewSet):
    """Conversations between a contact and an agent, and their messages."""

    queryset = Conversation.objects.all()
    serializer_class = ConversationSerializer
    space = "conversations"
    create_handler = "conversations.create"
    filter_fields = {"status": "status", "contact": "contact_id", "agent": "agent_id"}
    search_fields = ("subject",)

    def _check_related(self, changes: dict[str, Any]) -> None:
        for field, model in (("contact_id", Contact), ("agent_id", Agent)):
            pk = changes.get(field)
            if pk is not None and not model.objects.filter(pk=pk).exists():
                raise serializers.ValidationError({field[:-3]: [f"No such id {pk}."]})

    @extend_schema(methods=["GET"], responses=MessageSerializer(many=True),
                   summary="The conversation's messages, oldest first (not paginated).")
    @extend_schema(methods=["POST"], parameters=[IDEMPOTENCY_KEY],
                   responses={201: MessageSerializer}, summary="Add a message.")
    @action(detail=True, methods=["get", "post"], serializer_class=MessageSerializer,
            pagination_class=None, filter_backends=[])
    def messages(self, request: Request, pk: str) -> Response:
        if request.method == "POST":
            serializer = MessageSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            payload = {**serializer.validated_data, "conversation_id": int(pk)}
            return self._submit(request, "messages.create", payload,
                                entity=f"conversation:{pk}")
        return Response(protected.read(f"conversations:messages:{pk}",
                                       partial(self._messages, pk)))

    def _messages(self, pk: str) -> list[dict[str, Any]]:
        get_object_or_404(Conversation, pk=pk)
        messages = Message.objects.filter(conversation_id=pk)
        return [dict(item) for item in MessageSerializer(messages, many=True).data]


class PlatformViewSet(ProtectedViewSet):
    queryset = Platform.objects.all()
    serializer_class = PlatformSerializer
    space = "platforms"
    create_handler = "platforms.create"
    filter_fields = {"kind": "kind", "status": "status"}
    search_fields = ("name",)

    def _check_related(self, changes: dict[str, Any]) -> None:
        name = changes.get("name")
        if name and Platform.objects.filter(name=name).exclude(pk=self.kwargs["pk"]).exists():
            raise serializers.ValidationError({"name": [f"A platform named {name!r} exists."]})


class ObtainToken(FallbackHeadersMixin, APIView):
    """``POST {"username", "password"}`` -> ``{"token": ...}``."""

    authentication_classes: list[Any] = []
    resilience_operation = "auth"
    permission_classes = [AllowAny]

    @extend_schema(request=AuthTokenSerializer,
                   responses=inline_serializer("Token", {"token": serializers.CharField()}))
    def post(self, request: Request) -> Response:
        serializer = AuthTokenSerializer(data=request.data, context={"request": request})

        def obtain() -> str:
            serializer.is_valid(raise_exception=True)
            token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
            return str(token.key)

        return Response({"token": protected.auth("token", obtain)})
