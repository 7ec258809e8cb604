"""Images: the golden images of the image store, imported by admins and fetched by host agents.

The files live in the store directory (`kubekvm.image_store`: content-addressed, immutable,
shared by every replica); the `Image` documents say which the store holds. An import stages
its bytes, has the store inspect and admit them (`kubekvm.image_rules` judges), and only then
records the image: a refused or failed import leaves neither file nor document. The same
bytes imported twice are one image (the unique digest).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Sequence
from pathlib import Path

from pymongo.errors import DuplicateKeyError

from kubekvm import image_rules, validation
from kubekvm.config import Settings
from kubekvm.errors import NotFound, ValidationFailed
from kubekvm.image_models import Image
from kubekvm.image_store import ImageStore
from kubekvm.services.context import Noun
from kubekvm.services.rulebook import ADMIN, IMAGE_READER
from kubekvm.services.rules import Operations, operation

GIB = 1024**3
# What a page or the CLI may call an imported file: a plain file name, shown to people.
NAME_MAX = 200


def store_of(settings: Settings) -> ImageStore:
    return ImageStore(settings.image_store, max_virtual_bytes=settings.image_max_virtual_gib * GIB,
                      max_upload_bytes=settings.image_max_upload_gib * GIB,
                      tool_timeout=settings.image_tool_timeout_seconds)


def source_name(name: str) -> str:
    base = Path(name.replace("\\", "/")).name.strip()
    if not base or len(base) > NAME_MAX:
        raise ValidationFailed("file", "Choose an image file (a qcow2 or raw disk image) to import.")
    validation.storable(base, field="file")
    return base


class Images(Noun):
    """Images' records, unchecked (callers use `ImageOperations`)."""

    @property
    def store(self) -> ImageStore:
        return store_of(self.ctx.settings)

    async def list_images(self) -> list[Image]:
        return await Image.find_all().sort("-imported_at").to_list()

    async def get_image(self, digest: str) -> Image:
        image = await Image.find_one(Image.digest == image_rules.digest(digest))
        if image is None:
            raise NotFound(f"There is no image {digest} in the store.")
        return image

    async def retired_among(self, names: Sequence[str]) -> list[str]:
        """The file names among `names` of images the store garbage-collected."""
        digests = [d for d in (image_rules.digest_of_file_name(n) for n in names) if d is not None]
        if not digests:
            return []
        gone = await Image.find({"digest": {"$in": digests}, "retired": True}).to_list()
        return sorted(image_rules.file_name(i.digest) for i in gone)

    async def import_staged(self, staged: Path, *, name: str, format: str | None, by: str) -> tuple[Image, bool]:
        """Admits a staged file into the store and records it; (the image, whether it is new)."""
        admitted = await self.store.admit(staged, name=name, format=format)
        image = Image(digest=admitted.digest, name=name, size=admitted.size, virtual_size=admitted.virtual_size,
                      source_format=admitted.source_format, imported_by=by)
        try:
            await image.insert()
        except DuplicateKeyError:
            return await self.get_image(admitted.digest), False
        return image, True


class ImageOperations(Operations):
    """The image store as a caller may use it: admins list and import, host agents fetch."""

    @operation(ADMIN, field="images")
    async def list_images(self) -> list[Image]:
        return await self.services.images.list_images()

    @operation(ADMIN, audit="importImage", target=lambda args, actor: f"image:{args['name']}")
    async def import_image(self, *, name: str, format: str | None = None, upload: AsyncIterable[bytes] | None = None,
                           path: Path | None = None, size: int | None = None) -> tuple[Image, bool]:
        """Imports an upload (`upload`, streamed; `size` the length it declared) or a local file
        (`path`, the CLI's) under the file name `name`."""
        name = source_name(name)
        image_rules.declared_format(name, format)  # a bad format is refused before any byte is read
        store = self.services.images.store
        if path is not None:
            staged = await store.stage_copy(path)
        else:
            assert upload is not None
            staged = await store.receive(upload, expected_size=size)
        return await self.services.images.import_staged(staged, name=name, format=format, by=self.actor.name)

    @operation(IMAGE_READER, audit="downloadImage", target=lambda args, actor: f"image:{args['digest']}",
               routine=True)
    async def image_file(self, digest: str) -> Path:
        """The stored file of an image, for a host's agent to pull (or an admin to download)."""
        image = await self.services.images.get_image(digest)
        path = self.services.images.store.path(image.digest)
        if not path.is_file():
            raise NotFound(f"The image {digest} is recorded but its file is missing from the image store "
                           f"({self.services.images.store.directory}).")
        return path
