"""``manage.py seed_demo``: the demo CRM's data, users in each rate-limit tier and, with
``--admin``, a superuser. Idempotent: everything is made from its index, so a second run
finds it and adds only what a larger ``--contacts`` or ``--conversations`` asks for."""

import random
import sys
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import models, transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token
from tqdm import tqdm

from crm_demo.crm.models import Agent, Contact, Conversation, Message, Platform
from resilience_crm.conf import settings as resilience_settings
from resilience_crm.management import where
from resilience_crm.models import Tier, TierAssignment

FAMOUS = [
    ("Ada Lovelace", "ada@example.com", "Analytical Engines"),
    ("Grace Hopper", "grace@example.com", "Compilers Inc"),
    ("Alan Turing", "alan@example.com", "Bletchley Park"),
    ("Katherine Johnson", "katherine@example.com", "Langley"),
    ("Edsger Dijkstra", "edsger@example.com", "Shortest Paths BV"),
]
FIRST = ["Alex", "Bea", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivo", "Jun", "Kai",
         "Lea", "Mo", "Nia", "Oskar", "Priya", "Quinn", "Rosa", "Sami", "Tove"]
LAST = ["Adams", "Berg", "Costa", "Diaz", "Eriksen", "Fischer", "Garcia", "Horvat", "Ito",
        "Jansen", "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Rossi"]
COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries",
             "Wayne Enterprises", "Wonka", "Tyrell", "Cyberdyne"]
AGENTS = [("Sam", "human", "sam@example.com"), ("Rin", "human", "rin@example.com"),
          ("Noor", "human", "noor@example.com"), ("Tomás", "human", "tomas@example.com"),
          ("Helper Bot", "ai", ""), ("Triage Bot", "ai", "")]
PLATFORMS = [("Support inbox", "email", "connected"), ("Sales inbox", "email", "connected"),
             ("WhatsApp Business", "whatsapp", "connected"), ("#customers", "slack", "paused"),
             ("Order webhooks", "webhook", "error")]
SUBJECTS = ["Invoice question", "Cannot log in", "Upgrade to pro", "Data export",
            "Refund request", "API limits", "Password reset", "Feature request"]
LINES = {"contact": ["Hi, can you help?", "It still does not work.", "Thanks, that fixed it!",
                     "Any news on this?"],
         "agent": ["Happy to help: could you send a screenshot?", "I have escalated this.",
                   "Fixed on our side, please try again.", "Closing this, reply to reopen."]}
TIERS = ("free", "pro", "enterprise")
BATCH = 500
#: Seeded conversations and messages are spread over this many days up to now.
SPREAD_DAYS = 10


class Command(BaseCommand):
    help = ("Create the demo CRM data (idempotent): contacts, agents, platforms, conversations "
            "with messages, and a user in each tier; with --admin, a demo superuser too.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--contacts", type=_count, default=2000, metavar="N",
                            help="contacts to have (default 2000)")
        parser.add_argument("--conversations", type=_count, default=3000, metavar="N",
                            help="conversations to have (default 3000)")
        parser.add_argument("--messages", type=_count, default=4, metavar="N",
                            help="messages in each new conversation (default 4)")
        parser.add_argument("--password", default="demo",
                            help="password of the tier users demo-free, demo-pro, ...")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
        parser.add_argument("--admin", action="store_true", help="create or update the demo admin")
        parser.add_argument("--admin-username", default="admin")
        parser.add_argument("--admin-password", default="admin")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(where.line())
        self.progress = not options["no_progress"]
        rng = random.Random(9)  # the same data on every machine
        agents = [Agent.objects.get_or_create(name=name, defaults={"kind": kind, "email": email})[0]
                  for name, kind, email in AGENTS]
        for name, kind, status in PLATFORMS:
            Platform.objects.get_or_create(name=name, defaults={"kind": kind, "status": status})
        contacts = self._contacts(options["contacts"])
        conversations = self._conversations(options["conversations"], contacts, agents, rng)
        self._messages(conversations, options["messages"], rng)
        self.stdout.write(
            f"Demo data: {Contact.objects.count()} contacts, {Agent.objects.count()} agents, "
            f"{Platform.objects.count()} platforms, {Conversation.objects.count()} "
            f"conversations, {Message.objects.count()} messages.")
        for tier in TIERS:
            self._user(f"demo-{tier}", options["password"], tier=tier)
        if options["admin"]:
            self._user(options["admin_username"], options["admin_password"], admin=True)

    def _contacts(self, wanted: int) -> list[Contact]:
        rows = [Contact(name=name, email=email, company=company)
                for name, email, company in FAMOUS[:wanted]]
        for i in range(len(rows), wanted):
            first, last = FIRST[i % len(FIRST)], LAST[i // len(FIRST) % len(LAST)]
            rows.append(Contact(name=f"{first} {last}",
                                email=f"{first}.{last}.{i}@example.com".lower(),
                                company=COMPANIES[i % len(COMPANIES)],
                                phone=f"+1 555 {i:07d}"))
        emails = [row.email for row in rows]
        self._create(Contact, rows, "email", emails, "contacts")
        by_email = dict(Contact.objects.filter(email__in=emails).values_list("email", "pk"))
        return [Contact(pk=by_email[email]) for email in emails]

    def _conversations(self, wanted: int, contacts: Sequence[Contact], agents: Sequence[Agent],
                       rng: random.Random) -> list[Conversation]:
        if not contacts:
            return []
        now = timezone.now()
        rows = []
        for i in range(wanted):
            age = timedelta(days=SPREAD_DAYS) * rng.random()
            rows.append(Conversation(
                contact_id=contacts[i % len(contacts)].pk, agent=agents[i % len(agents)],
                subject=f"{SUBJECTS[i % len(SUBJECTS)]} (#{i + 1})",
                status="closed" if rng.random() < 0.6 else "open", created_at=now - age))
        return self._create(Conversation, rows, "subject", [row.subject for row in rows],
                            "conversations")

    def _messages(self, conversations: Iterable[Conversation], each: int,
                  rng: random.Random) -> None:
        now = timezone.now()
        rows = []
        for conversation in conversations:
            at = conversation.created_at
            for n in range(each):
                sender = "contact" if n % 2 == 0 else "agent"
                at = min(now, at + timedelta(minutes=rng.randint(1, 600)))
                rows.append(Message(
                    conversation_id=conversation.pk, sender=sender,
                    agent_id=conversation.agent_id if sender == "agent" else None,
                    body=rng.choice(LINES[sender]), created_at=at))
        self._create(Message, rows, None, [], "messages")

    def _create(self, model: type[models.Model], rows: list[Any], field: str | None,
                values: list[str], label: str) -> list[Any]:
        """Insert the ``rows`` whose ``field`` is not taken yet, in batches, with a progress
        bar; the created rows (with their primary keys)."""
        if field is not None:
            taken: set[str] = set()
            for start in range(0, len(values), BATCH):
                taken.update(model._default_manager.filter(
                    **{f"{field}__in": values[start:start + BATCH]}
                ).values_list(field, flat=True))
            rows = [row for row in rows if getattr(row, field) not in taken]
        created: list[Any] = []
        with tqdm(total=len(rows), desc=label, unit=" rows", file=sys.stderr,
                  disable=not self.progress or None) as bar:
            for start in range(0, len(rows), BATCH):
                batch = rows[start:start + BATCH]
                created.extend(model._default_manager.bulk_create(batch))
                bar.update(len(batch))
        return created

    def _user(self, username: str, password: str, *, tier: str = "",
              admin: bool = False) -> None:
        user, _ = get_user_model().objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = admin
        user.set_password(password)
        user.save()
        token, _ = Token.objects.get_or_create(user=user)
        if tier:
            limits = resilience_settings.TIERS.get(tier, {})
            row, _ = Tier.objects.get_or_create(name=tier, defaults={"limits": limits})
            TierAssignment.objects.update_or_create(user=user, defaults={"tier": row})
            self.stdout.write(f"Tier {tier}: {username} / {password}  token {token.key}")
        else:
            self.stdout.write(self.style.SUCCESS(f"Demo admin: {username} / {password}"))
            self.stdout.write(f"API token: {token.key}")


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number
