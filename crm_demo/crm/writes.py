"""The demo's write handlers: what ``protected.submit`` applies now or replays later.

Each takes the validated payload (JSON) and returns the created object as the API shows it;
that result is kept with the idempotency key, so a client repeating a create gets it back.
Each names its model, so a payload its columns cannot hold is refused before the write is
applied or queued (``InvalidWrite``, 400), with the database up or down.
"""

from typing import Any

from rest_framework.exceptions import ValidationError

from crm_demo.crm.models import Agent, Contact, Conversation, Message, Platform
from crm_demo.crm.serializers import (
    AgentSerializer,
    ContactSerializer,
    ConversationSerializer,
    MessageSerializer,
    PlatformSerializer,
)
from resilience_crm.provider.facade import protected


def _require(model: Any, field: str, pk: Any) -> None:
    if pk is not None and not model.objects.filter(pk=pk).exists():
        raise ValidationError({field: [f"No {model._meta.verbose_name} with id {pk}."]})


@protected.write_handler("contacts.create", key="contacts", model=Contact)
def create_contact(payload: dict[str, Any]) -> dict[str, Any]:
    return dict(ContactSerializer(Contact.objects.create(**payload)).data)


@protected.write_handler("agents.create", key="agents", model=Agent)
def create_agent(payload: dict[str, Any]) -> dict[str, Any]:
    return dict(AgentSerializer(Agent.objects.create(**payload)).data)


@protected.write_handler("conversations.create", key="conversations", model=Conversation)
def create_conversation(payload: dict[str, Any]) -> dict[str, Any]:
    _require(Contact, "contact", payload.get("contact_id"))
    _require(Agent, "agent", payload.get("agent_id"))
    return dict(ConversationSerializer(Conversation.objects.create(**payload)).data)


@protected.write_handler("messages.create", key="conversations", model=Message)
def create_message(payload: dict[str, Any]) -> dict[str, Any]:
    _require(Conversation, "conversation", payload.get("conversation_id"))
    _require(Agent, "agent", payload.get("agent_id"))
    return dict(MessageSerializer(Message.objects.create(**payload)).data)


@protected.write_handler("platforms.create", key="platforms", model=Platform)
def create_platform(payload: dict[str, Any]) -> dict[str, Any]:
    if Platform.objects.filter(name=payload["name"]).exists():
        raise ValidationError({"name": [f"A platform named {payload['name']!r} exists."]})
    return dict(PlatformSerializer(Platform.objects.create(**payload)).data)
