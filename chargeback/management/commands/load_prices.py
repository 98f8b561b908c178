"""Seed or refresh the shared price catalogue from the bundled `genai-prices` data."""

from django.core.management.base import BaseCommand

from chargeback.catalogue import load_catalogue


class Command(BaseCommand):
    help = "Load the model price catalogue from the genai-prices package (no network needed)."

    def handle(self, *args, **options) -> None:
        import genai_prices

        def progress(done: int, total: int) -> None:
            self.stdout.write(f"  {done}/{total} catalogue rows checked")

        result = load_catalogue(progress=progress if options["verbosity"] > 1 else None)
        self.stdout.write(
            self.style.SUCCESS(
                f"genai-prices {genai_prices.__version__}: {result.created} created, {result.updated} updated, "
                f"{result.unchanged} unchanged ({result.total} catalogue rows)."
            )
        )
