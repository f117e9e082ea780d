from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from rest_framework.authtoken.models import Token

from crm_demo.crm.models import Agent, Contact, Conversation

CONTACTS = [
    ("Ada Lovelace", "ada@example.com", "Analytical Engines"),
    ("Grace Hopper", "grace@example.com", "Compilers Inc"),
    ("Alan Turing", "alan@example.com", "Bletchley Park"),
    ("Katherine Johnson", "katherine@example.com", "Langley"),
    ("Edsger Dijkstra", "edsger@example.com", "Shortest Paths BV"),
]
AGENTS = [("Sam", "human", "sam@example.com"), ("Rin", "human", "rin@example.com"),
          ("Helper Bot", "ai", "")]
SUBJECTS = ["Invoice question", "Cannot log in", "Upgrade to pro", "Data export"]


class Command(BaseCommand):
    help = "Create the demo CRM data (idempotent); with --admin, a demo superuser too."

    def add_arguments(self, parser):
        parser.add_argument("--admin", action="store_true", help="create or update the demo admin")
        parser.add_argument("--admin-username", default="admin")
        parser.add_argument("--admin-password", default="admin")

    @transaction.atomic
    def handle(self, *args, **options):
        contacts = [
            Contact.objects.get_or_create(
                email=email, defaults={"name": name, "company": company}
            )[0]
            for name, email, company in CONTACTS
        ]
        agents = [
            Agent.objects.get_or_create(name=name, defaults={"kind": kind, "email": email})[0]
            for name, kind, email in AGENTS
        ]
        for i, contact in enumerate(contacts):
            Conversation.objects.get_or_create(
                contact=contact,
                subject=SUBJECTS[i % len(SUBJECTS)],
                defaults={"agent": agents[i % len(agents)]},
            )
        self.stdout.write(
            f"Demo data: {Contact.objects.count()} contacts, {Agent.objects.count()} agents, "
            f"{Conversation.objects.count()} conversations."
        )
        if options["admin"]:
            username, password = options["admin_username"], options["admin_password"]
            user, _ = get_user_model().objects.get_or_create(username=username)
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
            token, _ = Token.objects.get_or_create(user=user)
            self.stdout.write(self.style.SUCCESS(f"Demo admin: {username} / {password}"))
            self.stdout.write(f"API token: {token.key}")
