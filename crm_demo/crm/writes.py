"""The demo's write handlers: what ``protected.submit`` applies now or replays later.

Each takes the validated payload (JSON) and returns the created object as the API shows it;
that result is kept with the idempotency key, so a client repeating a create gets it back.
Each names its model, so a payload its columns cannot hold is refused before the write is
applied or queued (``InvalidWrite``, 400), with the database up or down.
"""

import functools
from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.serializers import ModelSerializer

from crm_demo.crm.models import Agent, Contact, Conversation, Message, Platform
from crm_demo.crm.serializers import (
    AgentSerializer,
    ContactSerializer,
    ConversationSerializer,
    MessageSerializer,
    PlatformSerializer,
)
from resilience_crm.provider.facade import protected


@functools.cache
def _shower(serializer: type[ModelSerializer]) -> ModelSerializer:
    """One serializer of each class per process, to show created objects: its fields are
    built once, not on every write (``to_representation`` keeps nothing of one object)."""
    return serializer()


def _shown(serializer: type[ModelSerializer], instance: Any) -> dict[str, Any]:
    """``instance`` as the API shows it: what ``serializer(instance).data`` holds."""
    return dict(_shower(serializer).to_representation(instance))


def _require(model: Any, field: str, pk: Any) -> None:
    if pk is not None and not model.objects.filter(pk=pk).exists():
        raise ValidationError({field: [f"No {model._meta.verbose_name} with id {pk}."]})


@protected.write_handler("contacts.create", key="contacts", model=Contact)
def create_contact(payload: dict[str, Any]) -> dict[str, Any]:
    return _shown(ContactSerializer, Contact.objects.create(**payload))


@protected.write_handler("agents.create", key="agents", model=Agent)
def create_agent(payload: dict[str, Any]) -> dict[str, Any]:
    return _shown(AgentSerializer, Agent.objects.create(**payload))


@protected.write_handler("conversations.create", key="conversations", model=Conversation)
def create_conversation(payload: dict[str, Any]) -> dict[str, Any]:
    _require(Contact, "contact", payload.get("contact_id"))
    _require(Agent, "agent", payload.get("agent_id"))
    return _shown(ConversationSerializer, Conversation.objects.create(**payload))


@protected.write_handler("messages.create", key="conversations", model=Message)
def create_message(payload: dict[str, Any]) -> dict[str, Any]:
    _require(Conversation, "conversation", payload.get("conversation_id"))
    _require(Agent, "agent", payload.get("agent_id"))
    return _shown(MessageSerializer, Message.objects.create(**payload))


@protected.write_handler("platforms.create", key="platforms", model=Platform)
def create_platform(payload: dict[str, Any]) -> dict[str, Any]:
    if Platform.objects.filter(name=payload["name"]).exists():
        raise ValidationError({"name": [f"A platform named {payload['name']!r} exists."]})
    return _shown(PlatformSerializer, Platform.objects.create(**payload))
