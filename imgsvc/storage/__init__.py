"""The storage side: job rows in SQL (the authoritative state) and uploaded files on disk."""
