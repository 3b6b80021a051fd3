"""Which upload store ``UPLOAD_DIR`` names: a local directory or an S3 bucket.

Kept apart from both stores: ``uploads.py`` (the store contract and the local store) and
``s3.py`` (the S3 store, built on that contract) then import in one direction only.
"""

from __future__ import annotations

from imgsvc.config import Settings
from imgsvc.storage.uploads import LocalUploadStore, UploadStore


def open_upload_store(settings: Settings) -> UploadStore:
    """The store ``UPLOAD_DIR`` names; config.py has already refused any other URL scheme."""
    if isinstance(settings.upload_dir, str):
        from imgsvc.storage.s3 import S3UploadStore  # boto3 is only imported where it is used

        return S3UploadStore(
            settings.upload_dir,
            settings.max_file_size,
            settings.staging_dir,
            timeout=settings.s3_timeout,
            cooldown=settings.s3_cooldown,
        )
    return LocalUploadStore(settings.upload_dir, settings.max_file_size)
