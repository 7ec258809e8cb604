"""KubeKVM's benchmarks: each measures the product side by side with a baseline in one run.

- P1 ``provision``: a class of N lab VMs through server + agent, against the raw libvirt limit
  and against the seed's full-copy ``virt-clone`` method (``baselines``);
- P2 ``status_latency``: a guest powers itself off -> a GraphQL subscriber sees ``shutoff``;
- P3 ``api_throughput``: listing 1,000 labs over GraphQL against a plain Starlette endpoint
  (``plain_app``) on the same database, and how many subscriptions one server holds
  (``subscribers``);
- P4 ``agent_scale``: one agent's reconciler converging 2,000 machines on libvirt's test driver;
- ``classday`` (``make classday``, run on its own): the whole system through a class's
  first minutes: a sign-in burst with a loop probe, a 30-machine lab over a real QEMU host and
  20 simulated ones, and server, database and agent kills mid-provision; it checks that
  everything converges exactly and that nothing failed outside the kill windows.

``python -m benchmarks`` runs P1-P4 (``--quick`` for a smoke run) and writes
``benchmarks/results/*.json``; ``report`` prints the table.
"""
