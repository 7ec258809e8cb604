"""The image store's documents: which images the store holds (the files themselves are in the
store directory, `kubekvm.image_store`; a document is written only once its file is in place).
"""

from __future__ import annotations

from datetime import datetime

from beanie import Document, Indexed
from pydantic import Field

from kubekvm.models import Stored, utcnow


class Image(Stored):
    """One image of the store: its digest (``sha256:<hex>`` of the stored qcow2's bytes), the
    file name it was imported from (for people; two imports of one file are one image), its
    size on disk and virtual size, what it was before conversion, who imported it and when."""

    digest: Indexed(str, unique=True)  # type: ignore[valid-type]
    name: str
    size: int
    virtual_size: int
    source_format: str
    imported_by: str
    imported_at: datetime = Field(default_factory=utcnow)
    # Retired with the last template version using it: its file is gone from the store, and
    # hosts drop their copies (`Host.drop_images`); kept so they learn it.
    retired: bool = False

    class Settings:
        name = "images"


IMAGE_MODELS: list[type[Document]] = [Image]
