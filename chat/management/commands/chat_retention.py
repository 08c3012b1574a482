"""manage.py chat_retention [--dry-run]: delete messages older than their room's retention.

Explained in docs/operations.md, 'Retention'.
"""

from django.core.management.base import BaseCommand

from chat import retention


class Command(BaseCommand):
    help = (
        "Delete each room's messages older than its retention period (Room.retention_days, "
        "else CHAT_RETENTION_DAYS), in small batches; safe from cron while the chat runs."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="say what would be deleted; delete nothing"
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=retention.BATCH_SIZE,
            help="messages deleted per transaction",
        )

    def handle(self, *args, dry_run, batch_size, **options):
        """Purge every room with a retention period; one line per room that lost messages."""
        verb = "would delete" if dry_run else "deleted"
        total = 0
        for done in retention.purge(dry_run=dry_run, batch=max(batch_size, 1)):
            if done.deleted:
                total += done.deleted
                self.stdout.write(
                    f"{done.room}: {verb} {done.deleted} messages older than {done.days} days "
                    f"(ids up to {done.until})"
                )
        self.stdout.write(f"{verb} {total} messages in all")
