"""The pages: Jinja2 templates driven by htmx, over the same declared operations as GraphQL.

Routes (all HTML; every POST also works as a plain form without JavaScript, and carries the
session's CSRF token):

  GET|POST /login   POST /logout        sign in and out (throttled per account and address)
  GET  /login/oidc/{provider}[/callback]   sign in with an OpenID provider; GET /signed-out
  GET|POST /setup?code=                 the first admin (only while no admin exists)
  GET|POST /set-password?code=          a one-time set-password link
  GET  /account  POST /account/tokens|password   your tokens and password
  POST /account/tokens/{id}/revoke
  GET  /my                              a student's machines ("My VMs"), live
  GET  /, /labs                         labs list (?phase=Active filters)
  GET  /new-lab   POST /labs            new lab form, create
  GET  /labs/{name}                     a lab's machines, roster and recent events, live
  POST /labs/{name}/roster              the roster (typed, pasted or a CSV file)
  POST /labs/{name}/roster/group        the roster from a directory group (or refreshed from it)
  GET|POST /labs/{name}/roster/{student}/link   a set-password link for a student (shown once)
  POST /labs/{name}/usage               the lab's usage limits (idle shutdown, hours per student)
  POST /labs/{name}/usage/{student}/grant   more hours for a student
  GET|POST /labs/{name}/edit            title, replicas, power
  POST /labs/{name}/start|stop          every machine of the lab
  GET|POST /labs/{name}/delete          confirmation (the lab's name, if machines run), delete
  GET|POST /labs/{name}/timetable       the lab's timetable and last day (pages.timetables)
  GET  /labs/{name}/usage.csv           its machines, students and times, as CSV
  POST /machines/{name}/start|stop|reset
  GET  /machines/{name}/console          the machine's console (noVNC), a page of its own
  POST /machines/{name}/console/ticket   a one-time ticket for the console's websocket (JSON)
  GET  /templates  GET /templates/new  POST /templates
  GET|POST /templates/{name}/edit   POST /templates/{name}/delete
  GET  /hosts   POST /hosts/tokens      hosts; admins issue host tokens
  GET|POST /templates/{name}/versions   POST /templates/{name}/versions/{number}/retire
  GET|POST /labs/{name}/version         a template's versions; a lab's (`kubekvm.pages.versions`)
  GET|POST /images                      the image store (`kubekvm.pages.images`)
  GET  /users   POST /users   POST /users/{name}/link   POST /users/{name}/sessions/end    (admins)
  POST /users/{name}/disable|enable|role|delete   (admins; the list filtered: ?role=&status=&q=&offset=)
  GET  /audit                           the audit log, filtered (admins)
  GET  /server
  GET  /operations                      the fleet at a glance (admins, `kubekvm.pages.operations`)
  GET  /events                          live updates (server-sent events, see `kubekvm.live`)

The new-lab form lives at /new-lab, not /labs/new, because "new" is a valid lab name.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from kubekvm.config import Settings
from kubekvm.live import LiveUpdates
from kubekvm.models import Role
from kubekvm.pages.account import AccountPages
from kubekvm.pages.audit import AuditPages
from kubekvm.pages.common import Handler, Renderer
from kubekvm.pages.console import ConsolePages
from kubekvm.pages.fragments import Fragments
from kubekvm.pages.hosts import HostPages
from kubekvm.pages.identity import IdentityPages
from kubekvm.pages.images import ImagePages
from kubekvm.pages.lab_forms import LabFormPages
from kubekvm.pages.labs import LabPages
from kubekvm.pages.my import MyPages
from kubekvm.pages.operations import OperationsPages
from kubekvm.pages.password_links import PasswordLinkPages
from kubekvm.pages.power import PowerPages
from kubekvm.pages.rosters import RosterPages
from kubekvm.pages.server import ServerPages
from kubekvm.pages.setup import SetupPages
from kubekvm.pages.sign_in import SignInPages
from kubekvm.pages.templates import TemplatePages
from kubekvm.pages.timetables import CoursePages
from kubekvm.pages.usage import UsagePages
from kubekvm.pages.users import UserPages
from kubekvm.pages.versions import VersionPages

STAFF = (Role.ADMIN, Role.TEACHER)
ADMIN = (Role.ADMIN,)


def routes(*, settings: Settings) -> list[BaseRoute]:
    renderer = Renderer(settings)
    fragments = Fragments(renderer)
    labs = LabPages(renderer=renderer)
    lab_forms = LabFormPages(renderer=renderer, settings=settings)
    rosters = RosterPages(renderer=renderer, labs=labs)
    power = PowerPages(renderer=renderer, fragments=fragments)
    course = CoursePages(renderer=renderer)
    usage = UsagePages(renderer=renderer, labs=labs)
    templates, hosts, server = (TemplatePages(renderer=renderer), HostPages(renderer=renderer),
                                ServerPages(renderer=renderer))
    signing_in, first_admin = SignInPages(renderer=renderer), SetupPages(renderer=renderer)
    links, account = PasswordLinkPages(renderer=renderer), AccountPages(renderer=renderer)
    users, audit, my = UserPages(renderer=renderer), AuditPages(renderer=renderer), MyPages(renderer=renderer)
    console = ConsolePages(renderer=renderer)
    operations = OperationsPages(renderer=renderer)
    images = ImagePages(renderer=renderer)
    identity = IdentityPages(renderer=renderer, settings=settings)
    versions = VersionPages(renderer=renderer)
    live = LiveUpdates(fragments=fragments, heartbeat_seconds=settings.live_heartbeat_seconds,
                       max_streams_per_user=settings.live_max_streams_per_user)
    guard = renderer.guard

    def staff(handler: Handler) -> Handler:
        return guard(handler, roles=STAFF)

    def admin(handler: Handler) -> Handler:
        return guard(handler, roles=ADMIN)

    post = ["POST"]
    return [
        Route("/login", guard(signing_in.login_form, public=True)),
        Route("/login", guard(signing_in.login, public=True), methods=post),
        Route("/logout", guard(signing_in.logout, public=True), methods=post),
        Route("/login/oidc/{provider}", guard(identity.start, public=True)),
        Route("/login/oidc/{provider}/callback", guard(identity.callback, public=True)),
        Route("/signed-out", guard(identity.signed_out, public=True)),
        Route("/setup", guard(first_admin.setup_form, public=True)),
        Route("/setup", guard(first_admin.setup, public=True), methods=post),
        Route("/set-password", guard(links.set_password_form, public=True), name="set_password_page"),
        Route("/set-password", guard(links.set_password, public=True), methods=post),
        Route("/account", guard(account.account)),
        Route("/account/tokens", guard(account.create_token), methods=post),
        Route("/account/tokens/{id}/revoke", guard(account.revoke_token), methods=post),
        Route("/account/password", guard(account.change_password), methods=post),
        Route("/my", guard(my.my)),
        Route("/users", admin(users.users)),
        Route("/users", admin(users.create_user), methods=post),
        Route("/users/{name}/link", admin(users.user_link), methods=post),
        Route("/users/{name}/sessions/end", admin(users.end_sessions), methods=post),
        Route("/users/{name}/disable", admin(users.disable), methods=post),
        Route("/users/{name}/enable", admin(users.enable), methods=post),
        Route("/users/{name}/role", admin(users.role), methods=post),
        Route("/users/{name}/delete", admin(users.delete), methods=post),
        Route("/audit", admin(audit.audit)),
        Route("/", guard(labs.index)),
        Route("/labs", staff(labs.index)),
        Route("/labs", staff(lab_forms.create), methods=post),
        Route("/new-lab", staff(lab_forms.new)),
        Route("/labs/{name}", staff(labs.detail)),
        Route("/labs/{name}/roster", staff(rosters.set_roster), methods=post),
        Route("/labs/{name}/roster/group", staff(rosters.roster_from_group), methods=post),
        Route("/labs/{name}/roster/{student}/link", staff(rosters.password_link_page)),
        Route("/labs/{name}/roster/{student}/link", staff(rosters.password_link), methods=post),
        Route("/labs/{name}/usage", staff(usage.set_policy), methods=post),
        Route("/labs/{name}/usage/{student}/grant", staff(usage.grant), methods=post),
        Route("/labs/{name}/edit", staff(lab_forms.edit)),
        Route("/labs/{name}/edit", staff(lab_forms.update), methods=post),
        Route("/labs/{name}/start", staff(power.start), methods=post),
        Route("/labs/{name}/stop", staff(power.stop), methods=post),
        Route("/labs/{name}/delete", staff(lab_forms.confirm_delete)),
        Route("/labs/{name}/delete", staff(lab_forms.delete), methods=post),
        Route("/labs/{name}/timetable", staff(course.form)),
        Route("/labs/{name}/timetable", staff(course.save), methods=post),
        Route("/labs/{name}/usage.csv", staff(course.usage_csv)),
        # Before /machines/{name}/{action}, which would take "publish" for an action.
        Route("/machines/{name}/publish", staff(versions.publish_machine), methods=post),
        Route("/machines/{name}/{action}", guard(power.machine_action), methods=post),
        Route("/machines/{name}/console", guard(console.page)),
        Route("/machines/{name}/console/ticket", guard(console.ticket), methods=post),
        Route("/templates", staff(templates.templates)),
        Route("/templates", admin(templates.create_template), methods=post),
        Route("/templates/new", admin(templates.new_template)),
        Route("/templates/{name}/edit", admin(templates.edit_template)),
        Route("/templates/{name}/edit", admin(templates.update_template), methods=post),
        Route("/templates/{name}/delete", admin(templates.delete_template), methods=post),
        Route("/templates/{name}/versions", staff(versions.template_versions)),
        Route("/templates/{name}/versions", admin(versions.publish), methods=post),
        Route("/templates/{name}/versions/{number}/retire", admin(versions.retire), methods=post),
        Route("/labs/{name}/version", staff(versions.lab_version)),
        Route("/labs/{name}/version", staff(versions.move), methods=post),
        Route("/hosts", staff(hosts.hosts)),
        Route("/hosts/tokens", admin(hosts.host_token), methods=post),
        Route("/images", admin(images.images)),
        # Not guarded like a form: it checks its caller and CSRF token before reading its body.
        Route("/images", images.upload, methods=post),
        Route("/server", guard(server.server)),
        Route("/operations", admin(operations.overview)),
        *live.routes(),
    ]
