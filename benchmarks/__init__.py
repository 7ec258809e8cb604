"""KubeKVM's benchmarks: each measures the product side by side with a baseline in one run.

- P1 ``provision``: a class of N lab VMs through server + agent, against the raw libvirt limit
  and against the seed's full-copy ``virt-clone`` method (``baselines``);
- P2 ``status_latency``: a guest powers itself off -> a GraphQL subscriber sees ``shutoff``;
- P3 ``api_throughput``: listing 1,000 labs over GraphQL against a plain Starlette endpoint
  (``plain_app``) on the same database, and how many subscriptions one server holds
  (``subscribers``);
- P4 ``agent_scale``: one agent's reconciler converging 2,000 machines on libvirt's test driver.

``python -m benchmarks`` runs them all (``--quick`` for a smoke run) and writes
``benchmarks/results/*.json``; ``report`` prints the table.
"""
