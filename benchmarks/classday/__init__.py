"""The class-day run (``make classday``): the whole system on this machine, under load and faults.

One run, bounded in time, proves that nothing freezes, nothing is lost and everything
converges when a class starts:

1. *The system.* A SecantusDB process with its data on disk (so it can be SIGKILLed and started
   again on the same data), two ``kubekvm serve`` replicas on it, one ``kubekvm-agent`` on this
   machine's libvirtd + QEMU (TCG guests of the tiny-linux template) and ``simulated_hosts``
   agents on libvirt's test driver (``test:///default``: each agent process has its own
   in-memory hypervisor; overlays are still real ``qemu-img`` files). Every agent knows both
   replicas. Placement prefers the host with most free memory, so the real host (the largest)
   is filled first, up to its vCPUs x ``KUBEKVM_CPU_OVERCOMMIT``; the run sets the overcommit so
   that the real host takes ``real_host_share`` machines and the simulated ones the rest.
2. *Sign-in burst.* ``students`` students sign in through the login page within
   ``sign_in_window_s`` (a real ``POST /login``: argon2 runs), spread over both replicas,
   while ``loop_probe`` (a process of its own) sends ``{ me { kind name } }`` to each replica
   every 100 ms. The probe's p99 during the burst must stay within 250 ms. The students then
   load "My VMs" and follow its live updates, and two ``deploymentEvents`` subscribers follow
   every lab; each must have its first snapshot before the lab is made.
3. *The lab, under faults.* The teacher creates a ``replicas``-machine lab and sets its roster
   to the students; ``subscribers`` more subscribers follow the lab by name (they can only
   once it exists), ``listers`` GraphQL clients list labs. Meanwhile, mid-provision: one server replica is SIGKILLed and
   started again on its port, the database is SIGKILLed and started again on its data after
   ``db_down_s``, and the real host's agent is SIGKILLed ``agent_kills`` times at random
   moments: the first within ``kill_gap_s`` of the lab's creation, each next one a random
   0.3 s to ``kill_gap_s`` after the agent was started again (a random 0.1-1 s after its kill),
   so the kills follow provisioning however fast the machine is (a kill may hit an agent still
   starting; the report says which kills came before every machine first ran).
4. *Afterwards.* The lab must be Active with every machine running; exactly the desired
   domains (``virsh list --all``, ``kubekvm-<lab>-`` names) on the real host and exactly one
   overlay per machine in every host's state directory (on simulated hosts, also what their
   agents report: no orphans); each student bound to one machine; every subscriber's view and
   every student's page equal to the final state; and no failed request outside the kill
   windows. Then the lab is deleted and nothing may be left on any host.

*Kill windows.* Every failed request (a student's, a subscriber's, a lister's, the probe's,
the harness's own reads) is recorded with the replica it went to and when it started and
ended; a machine reported ERROR or a lab seen Failed is recorded against its host / the lab.
A failure is excused when it overlaps a window whose target it hit: a server replica's window
(its URL) runs from its SIGKILL until it answers ``/readyz`` again; the database's (every
target) from its SIGKILL until both replicas answer ``/readyz`` again; an agent's (its host)
from its SIGKILL until the restarted agent's heartbeat reaches the server. Each window is
extended by ``RECOVERY_GRACE_S`` for clients to notice and reconnect. Everything else is an
error of the run.

The report (``benchmarks/results/classday.json`` or ``quick/classday.json``, and
``classday.txt``, a summary for people) carries the figures, every check, every window and
every failure, the machine it ran on, the load average, and each process's resident memory
(sampled every second). ``--quick`` (the CI smoke test) runs the same steps smaller; only its
outcomes are asserted, never its timings. Everything the run starts is stopped and every
domain and file it made removed on every way out (``finally`` + ``atexit``; SIGTERM becomes
an exception).
"""
