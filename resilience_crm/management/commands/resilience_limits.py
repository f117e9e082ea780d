import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

import resilience_crm.ratelimit.limiter as limiter
from resilience_crm.exceptions import StoreUnavailable
from resilience_crm.management import where
from resilience_crm.ratelimit import principals
from resilience_crm.ratelimit.principals import Principal
from resilience_crm.ratelimit.standing import standing

#: Longest principal argument taken (a username, a user id or an address).
MAX_ARGUMENT = 256


class Command(BaseCommand):
    help = ("Why is this user limited? Show each rate-limit policy of a user (username, or "
            "id with --id) or of an IP address: remaining, reset and the last refusal.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("principal", help="a username, a user id (with --id) or an address")
        parser.add_argument("--id", action="store_true", help="the argument is a user's id")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def handle(self, *args: Any, **options: Any) -> None:
        (self.stderr if options["json"] else self.stdout).write(where.line())
        who = self._principal(str(options["principal"])[:MAX_ARGUMENT], options["id"])
        store = limiter.get_store()
        try:
            policies = standing(who)
        except StoreUnavailable as err:
            raise CommandError(f"The rate-limit store cannot be reached: {err.__cause__ or err}"
                               ) from err
        name = type(store).__qualname__
        if options["json"]:
            self.stdout.write(json.dumps({
                "principal": who.key, "tier": who.tier, "exempt": who.exempt, "store": name,
                "shared": store.shared,
                "policies": [{**p._asdict(), "last_refusal": p.last_refusal and
                              p.last_refusal.isoformat()} for p in policies],
            }, indent=2))
            return
        exempt = " (exempt: never limited)" if who.exempt else ""
        self.stdout.write(f"{who.key}: tier {who.tier}{exempt}; store {name}")
        if not store.shared:
            self.stdout.write(self.style.WARNING(
                "The store keeps limits inside each process: this command sees none of the "
                "servers' counts."))
        rows = [("POLICY", "LIMIT", "REMAINING", "RESET IN", "LAST REFUSAL")]
        for p in policies:
            refused = ("not recorded by this store" if not p.recorded else
                       p.last_refusal.isoformat(timespec="seconds") if p.last_refusal else
                       "none")
            rows.append((p.policy + (" (shadow)" if p.shadow else ""),
                         f"{p.limit}/{p.window:g}s", str(p.remaining), f"{p.reset:.1f}s",
                         refused))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for index, row in enumerate(rows):
            line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            exhausted = index > 0 and policies[index - 1].remaining == 0
            self.stdout.write(self.style.ERROR(line.rstrip()) if exhausted else line.rstrip())
        if not policies:
            self.stdout.write("No limits apply.")

    def _principal(self, text: str, by_id: bool) -> Principal:
        users = get_user_model()._default_manager
        if by_id:
            user = users.filter(pk=text).first() if text.isdigit() else None
        else:
            user = users.filter(**{get_user_model().USERNAME_FIELD: text}).first()
            if user is None and (address := principals.grouped_address(text)) is not None:
                return principals.of_address(address)
        if user is None:
            raise CommandError(f"No user {'with id ' if by_id else ''}{text!r}, nor an address.")
        return principals.of_user(user)
