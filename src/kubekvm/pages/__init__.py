"""The teachers' pages: Jinja2 templates driven by htmx, over the same service layer as GraphQL.

Routes (all HTML; every POST also works as a plain form without JavaScript):

  GET  /, /labs                     labs list (?phase=Active filters)
  GET  /new-lab   POST /labs        new lab form, create
  GET  /labs/{name}                 a lab's machines and recent events, live
  GET|POST /labs/{name}/edit        title, replicas, power
  POST /labs/{name}/start|stop      every machine of the lab
  GET|POST /labs/{name}/delete      confirmation (the lab's name, if machines run), delete
  POST /machines/{name}/start|stop|reset
  GET  /templates  GET /templates/new  POST /templates
  GET|POST /templates/{name}/edit   POST /templates/{name}/delete
  GET  /hosts, /server
  GET  /events                      live updates (server-sent events, see `kubekvm.live`)

The new-lab form lives at /new-lab, not /labs/new, because "new" is a valid lab name.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from kubekvm.config import Settings
from kubekvm.live import LiveUpdates
from kubekvm.pages.catalog import CatalogPages
from kubekvm.pages.common import Renderer
from kubekvm.pages.fragments import Fragments
from kubekvm.pages.labs import LabPages


def routes(*, settings: Settings) -> list[BaseRoute]:
    renderer = Renderer(settings)
    fragments = Fragments(renderer)
    labs = LabPages(renderer=renderer, fragments=fragments, settings=settings)
    catalog = CatalogPages(renderer=renderer)
    live = LiveUpdates(fragments=fragments, heartbeat_seconds=settings.live_heartbeat_seconds)
    guard = renderer.guard
    post = ["POST"]
    return [
        Route("/", guard(labs.index)),
        Route("/labs", guard(labs.index)),
        Route("/labs", guard(labs.create), methods=post),
        Route("/new-lab", guard(labs.new)),
        Route("/labs/{name}", guard(labs.detail)),
        Route("/labs/{name}/edit", guard(labs.edit)),
        Route("/labs/{name}/edit", guard(labs.update), methods=post),
        Route("/labs/{name}/start", guard(labs.start), methods=post),
        Route("/labs/{name}/stop", guard(labs.stop), methods=post),
        Route("/labs/{name}/delete", guard(labs.confirm_delete)),
        Route("/labs/{name}/delete", guard(labs.delete), methods=post),
        Route("/machines/{name}/{action}", guard(labs.machine_action), methods=post),
        Route("/templates", guard(catalog.templates)),
        Route("/templates", guard(catalog.create_template), methods=post),
        Route("/templates/new", guard(catalog.new_template)),
        Route("/templates/{name}/edit", guard(catalog.edit_template)),
        Route("/templates/{name}/edit", guard(catalog.update_template), methods=post),
        Route("/templates/{name}/delete", guard(catalog.delete_template), methods=post),
        Route("/hosts", guard(catalog.hosts)),
        Route("/server", guard(catalog.server)),
        *live.routes(),
    ]
