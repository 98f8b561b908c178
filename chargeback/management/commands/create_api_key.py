"""Issue an API key from the command line and print its token once."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chargeback import keys
from chargeback.models import Department, Tenant


class Command(BaseCommand):
    help = "Create an API key for a tenant and print its token (shown once, stored only as a hash)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="Tenant slug.")
        parser.add_argument("--name", required=True, help="What the key is for, e.g. 'support-bot'.")
        parser.add_argument("--department", help="Department code every call is charged to.")
        parser.add_argument("--user", help="Username attributed to calls that name no user.")
        parser.add_argument("--rpm", type=int, help="Requests per minute limit.")
        parser.add_argument("--tpm", type=int, help="Tokens per minute limit.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = Tenant.objects.get(slug=options["tenant"])
        except Tenant.DoesNotExist:
            raise CommandError(f"Unknown tenant {options['tenant']!r}: no tenant has that slug.") from None

        department = None
        if options["department"]:
            try:
                department = Department.objects.get(tenant=tenant, code=options["department"])
            except Department.DoesNotExist:
                raise CommandError(f"Unknown department {options['department']!r} in tenant {tenant.slug!r}.") from None

        user = None
        if options["user"]:
            User = get_user_model()
            try:
                user = User.objects.get(**{User.USERNAME_FIELD: options["user"]})
            except User.DoesNotExist:
                raise CommandError(f"Unknown user {options['user']!r}.") from None

        for flag in ("rpm", "tpm"):
            if options[flag] is not None and options[flag] < 1:
                raise CommandError(f"--{flag} must be a positive whole number.")

        try:
            key, raw = keys.create_api_key(
                tenant=tenant,
                name=options["name"],
                department=department,
                user=user,
                rpm_limit=options["rpm"],
                tpm_limit=options["tpm"],
                actor="manage.py create_api_key",
            )
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
            raise CommandError(f"Cannot create the key. {problems}") from None

        self.stdout.write(f"Created API key {key.name!r} for {tenant.slug} (prefix {key.prefix}).")
        self.stdout.write(
            self.style.WARNING("Copy the token now: it is stored only as a hash and will not be shown again.")
        )
        self.stdout.write(raw)
