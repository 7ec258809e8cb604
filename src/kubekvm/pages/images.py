"""The image store over HTTP: the admins' Images page with its streamed upload, and the image
files host agents pull.

  GET  /images                  the store's images and the import form (admins)
  POST /images                  an import: the file as the raw request body (the page's script,
                                `static/image-upload.js`, with a progress bar; or any program with
                                an admin token: ``curl -H 'X-Image-Name: disk.qcow2' --data-binary
                                @disk.qcow2``), or a plain multipart form (the page without JS)
  GET  /images/{digest}/file    an image's bytes, with ``Range`` (a pull resumes where it broke
                                off): host agents (their host token) and admins (`image_file`;
                                routed by `kubekvm.app`, as it is not a page)
  POST /machines/{name}/publish/{job}   a host's agent uploads a machine being published
                                (`published_upload`, routed by `kubekvm.app`)

An import is never held in memory: the raw body is written to the store's staging area as it
arrives; a multipart form is spooled to a temporary file by the form parser first (the one
extra copy of the page without JavaScript). The upload route checks who is asking and the
CSRF token (a header, or the form's query string) before a byte of the body is read, and
`kubekvm.boundary.BodyLimit` leaves its body alone (it would buffer it): its own limit is the
store's (`KUBEKVM_IMAGE_MAX_UPLOAD_GIB`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import unquote

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response

from kubekvm.access.actors import ActorKind
from kubekvm.access.roles import require_admin
from kubekvm.auth import CSRF_FIELD, CSRF_HEADER, CSRF_KEY, actor_of, services_for
from kubekvm.credentials import same
from kubekvm.errors import KubeKVMError, Unauthenticated
from kubekvm.image_models import Image
from kubekvm.image_rules import ImageRefused
from kubekvm.pages.common import Flash, Renderer, set_flash

UPLOAD_PATH = "/images"
_CHUNK = 1024 * 1024


class ImagePages:
    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def images(self, request: Request) -> Response:
        return self.renderer.page(request, "images/list.html", {
            "section": "images", "images": await services_for(request).list_images(),
            "max_upload_gib": request.app.state.settings.image_max_upload_gib,
        })

    async def upload(self, request: Request) -> Response:
        """An import; answers like a form (a redirect with a flash; JSON for the page's script)."""
        actor = actor_of(request)
        script = request.headers.get("X-Requested-With") == "XMLHttpRequest"
        try:
            if actor.kind == ActorKind.ANONYMOUS:
                raise Unauthenticated("Sign in as an admin to import images.")
            require_admin(actor)
            if not _csrf_ok(request):
                return self.renderer.refuse_csrf(request)
            image, new = await self._import(request)
        except KubeKVMError as error:
            if script or actor.via == "token":
                return _json({"ok": False, "code": error.code, "message": error.message,
                              "reason": getattr(error, "reason", None)}, status=422 if isinstance(
                                  error, ImageRefused) else 400 if error.code == "VALIDATION_FAILED" else 403)
            if isinstance(error, Unauthenticated):
                return self.renderer.sign_in_first(request)
            return self.renderer.error(request, error, back=UPLOAD_PATH)
        said = (f"Imported {image.name} as {image.digest}." if new
                else f"{image.name} is already in the store as {image.digest}.")
        if script or actor.via == "token":
            response = _json({"ok": True, "digest": image.digest, "new": new, "message": said})
            if script:
                set_flash(response, Flash(said))
            return response
        return self.renderer.done(request, to=UPLOAD_PATH, flash=Flash(said))

    async def _import(self, request: Request) -> tuple[Image, bool]:
        services = services_for(request)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=5)
            upload = form.get("file")
            format_ = form.get("format")
            if not isinstance(upload, UploadFile) or not upload.filename:
                raise ImageRefused("INCOMPLETE_UPLOAD", "Choose an image file to import.")
            try:
                return await services.import_image(name=upload.filename, upload=_read(upload),
                                                   format=format_ if isinstance(format_, str) and format_ else None)
            finally:
                await upload.close()
        name = unquote(request.headers.get("X-Image-Name", ""))
        declared = request.headers.get("content-length")
        size = int(declared) if declared and declared.isascii() and declared.isdigit() else None
        return await services.import_image(name=name, upload=_body(request), size=size,
                                           format=request.headers.get("X-Image-Format") or None)

async def image_file(request: Request) -> Response:
    """An image's bytes (starlette's FileResponse answers ``Range`` with 206, reading in a
    worker thread)."""
    try:
        path = await services_for(request).image_file(request.path_params["digest"])
    except KubeKVMError as error:
        status = {"UNAUTHENTICATED": 401, "FORBIDDEN": 403, "NOT_FOUND": 404}.get(error.code, 400)
        return _json({"ok": False, "code": error.code, "message": error.message}, status=status)
    return FileResponse(path, media_type="application/octet-stream",
                        headers={"Cache-Control": "no-store"})


async def published_upload(request: Request) -> Response:
    """A host's agent uploads the flattened disk of a machine being published
    (`kubekvm.services.publishing`); ``X-Publish-Error`` instead says why it could not."""
    actor = actor_of(request)
    declared = request.headers.get("content-length")
    try:
        if actor.kind == ActorKind.ANONYMOUS:
            raise Unauthenticated("A host token is needed.")
        machine = await services_for(request).receive_published(
            str(request.path_params["name"]), job=str(request.path_params["job"]), host=actor.name,
            upload=_body(request), failure=unquote(request.headers.get("X-Publish-Error", "")) or None,
            size=int(declared) if declared and declared.isascii() and declared.isdigit() else None)
    except KubeKVMError as error:
        status = {"UNAUTHENTICATED": 401, "FORBIDDEN": 403, "NOT_FOUND": 404, "CONFLICT": 409}.get(error.code, 422)
        return _json({"ok": False, "code": error.code, "message": error.message}, status=status)
    assert machine.publish is not None
    return _json({"ok": True, "message": machine.publish.message})


def _csrf_ok(request: Request) -> bool:
    if actor_of(request).via == "token":
        return True
    expected = request.session.get(CSRF_KEY)
    supplied = request.headers.get(CSRF_HEADER) or request.query_params.get(CSRF_FIELD) or ""
    return isinstance(expected, str) and bool(expected) and bool(supplied) and same(expected, supplied)


async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise ImageRefused("INCOMPLETE_UPLOAD", "The upload was cut off before its end; nothing was "
                                                "imported. Upload the file again.") from None


async def _read(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(_CHUNK):
        yield chunk


def _json(body: dict[str, object], *, status: int = 200) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json")
