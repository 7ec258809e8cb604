"""Who may do what: the authorization rules as plain functions of an `Actor` and a document.

An actor is whoever sent a request: nobody (anonymous), a person (a user with a role, signed
in with a session cookie or an API token) or a host agent (a host token, acting for that one
host). The rules:

- admin: everything.
- teacher: their own labs (create, change, delete, their machines and roster); templates
  they may use (all, unless a template lists the teachers it is for); hosts, read-only.
- student: the labs they are on the roster of (read-only), and only their own machine of each
  (read, start, stop, reset).
- host: register, heartbeat and report for its own host, and follow its own assignments
  and console requests.
- scraper (a scrape token, for Prometheus): `/metrics` only; every operation refuses it.
- a machine's console (its screen and keyboard): the student bound to it, the teacher whose
  lab it is, admins. A classmate on the same roster is FORBIDDEN (they see the lab already).
- passwords, so that no teacher can take over a student's account (and with it the student's
  machines in another teacher's lab): an existing password is changed only by its owner (who
  must give the current one) or by an admin; a teacher may only make a first-time
  set-password link, for a student who has no password yet and whose every lab is that
  teacher's own; such a link stops working once that no longer holds (the student gained a
  password or landed on another teacher's roster). Ending all of a user's sessions is an
  admin's act.

Refusals say as little as they must: what a role may never do is FORBIDDEN without looking
anything up; an object the actor may not even see is NOT_FOUND, so that teacher B learns
nothing of teacher A's labs. Nothing here imports GraphQL, HTML or the database: the rules read
a document's fields through the shapes of `kubekvm.access.facts`; the layer that enforces them
(`kubekvm.authorized`) reads the documents, asks these functions, and builds the database
filters that narrow lists to what an actor may see.

The package's modules, one noun each: `actors` (who is asking), `facts` (what the rules read
of a document), `roles` (the checks by role alone), `objects` (the rules on a lab, a machine,
a console, a template) and `passwords` (who may set whose password, and for how long a
set-password link holds).
"""
