from django.contrib import admin

from crm_demo.crm.models import Agent, Contact, Conversation, Platform


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = ("name", "email", "company", "created_at")
    search_fields = ("name", "email", "company")


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "email")
    list_filter = ("kind",)
    search_fields = ("name", "email")


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("subject", "contact", "agent", "status", "created_at")
    list_filter = ("status", "agent__kind")
    search_fields = ("subject", "contact__name")
    autocomplete_fields = ("contact", "agent")


@admin.register(Platform)
class PlatformAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "status", "connected_at")
    list_filter = ("kind", "status")
    search_fields = ("name",)
