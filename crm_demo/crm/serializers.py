"""What the demo API reads and writes. Foreign keys are plain ids, checked by the write
handlers, so that validating a request never touches the database outside ``protected``."""

from rest_framework import serializers

from crm_demo.crm.models import Agent, Contact, Conversation, Message, Platform


class ContactSerializer(serializers.ModelSerializer):
    class Meta:
        model = Contact
        fields = ["id", "name", "email", "phone", "company", "created_at"]
        read_only_fields = ["id", "created_at"]


class AgentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Agent
        fields = ["id", "name", "kind", "email", "created_at"]
        read_only_fields = ["id", "created_at"]


class ConversationSerializer(serializers.ModelSerializer):
    contact = serializers.IntegerField(source="contact_id", min_value=1)
    agent = serializers.IntegerField(source="agent_id", min_value=1, allow_null=True,
                                     required=False)

    class Meta:
        model = Conversation
        fields = ["id", "contact", "agent", "subject", "status", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class MessageSerializer(serializers.ModelSerializer):
    conversation = serializers.IntegerField(source="conversation_id", read_only=True)
    agent = serializers.IntegerField(source="agent_id", min_value=1, allow_null=True,
                                     required=False)

    class Meta:
        model = Message
        fields = ["id", "conversation", "sender", "agent", "body", "created_at"]
        read_only_fields = ["id", "conversation", "created_at"]


class PlatformSerializer(serializers.ModelSerializer):
    class Meta:
        model = Platform
        fields = ["id", "name", "kind", "status", "connected_at"]
        read_only_fields = ["id", "connected_at"]
        # Uniqueness is the write handlers' to check: validation never touches the database.
        extra_kwargs: dict[str, dict[str, list[object]]] = {"name": {"validators": []}}
