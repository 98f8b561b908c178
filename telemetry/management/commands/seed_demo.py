"""Create the demo tenant with a month of realistic, priced usage."""

from django.core.management.base import BaseCommand

from chargeback.models import Tenant
from chargeback.money import format_money
from telemetry.demo import DEMO_PASSWORD, DEMO_SLUG, PEOPLE, reset_demo, seed_demo


class Command(BaseCommand):
    help = "Seed a demo tenant (departments, people of every role, budgets, routes, prices, a month of usage)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--reset", action="store_true", help="Delete the demo tenant first and seed it again.")
        parser.add_argument("--days", type=int, default=30, help="Days of usage history (default 30).")
        parser.add_argument("--events-per-day", type=int, default=900, help="Average events per day (default 900).")

    def handle(self, *args, **options) -> None:
        if options["days"] < 1 or options["events_per_day"] < 1:
            from django.core.management.base import CommandError

            raise CommandError("--days and --events-per-day must be at least 1.")
        if Tenant.objects.filter(slug=DEMO_SLUG).exists():
            if not options["reset"]:
                self.stdout.write(f"The demo tenant '{DEMO_SLUG}' already exists; use --reset to seed it again.")
                return
            self.stdout.write("Removing the existing demo tenant…")
            reset_demo()
        result = seed_demo(days=options["days"], events_per_day=options["events_per_day"], progress=self.stdout.write)
        self.stdout.write(
            self.style.SUCCESS(
                f"Seeded {result.tenant.name}: {result.events:,} usage events costing "
                f"{format_money(result.cost)} ({result.unpriced} left unpriced on purpose)."
            )
        )
        logins = ", ".join(f"{username} ({role})" for username, role, _dept, _name in PEOPLE)
        self.stdout.write(f"Logins (password '{DEMO_PASSWORD}'): {logins}")
