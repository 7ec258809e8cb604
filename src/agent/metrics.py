"""The agent's metrics, served at `/metrics` on its health port (`agent.health`).

One agent per host, one process: its own registry, nothing shared. What an operator needs to
see before the teachers call: whether the agent is connected to a server and to libvirtd,
how its reconcile passes go and how long they take, libvirt calls' latency and errors by call,
how many reports wait to be sent (the outbox), image pulls, and the domains it sees by state.

Labels are bounded: libvirt calls are named by the API call (`defineXML`, `create`), never by
the domain; outcomes and states are closed sets. The health port binds to loopback unless told
otherwise (in Kubernetes, the pod's own address, for the PodMonitor).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

SERVER_CONNECTED = Gauge("kubekvm_agent_server_connected",
                         "1 while the agent follows its assignments on a server replica.", registry=REGISTRY)
SERVER_CONNECTS = Counter("kubekvm_agent_server_connects",
                          "Connections to a server replica, by outcome (ok, failed).", ["outcome"], registry=REGISTRY)
LIBVIRT_CONNECTED = Gauge("kubekvm_agent_libvirt_connected", "1 while the agent has a libvirtd connection.",
                          registry=REGISTRY)
RECONCILE_PASSES = Counter("kubekvm_agent_reconcile_passes",
                           "One machine's reconcile steps, by outcome (ok, error, unavailable).", ["outcome"],
                           registry=REGISTRY)
RECONCILE_DURATION = Histogram("kubekvm_agent_reconcile_duration_seconds", "Time one machine's reconcile pass took.",
                               buckets=_BUCKETS, registry=REGISTRY)
LIBVIRT_CALLS = Counter("kubekvm_agent_libvirt_calls", "libvirt calls, by call and outcome (ok, error, timeout).",
                        ["call", "outcome"], registry=REGISTRY)
LIBVIRT_DURATION = Histogram("kubekvm_agent_libvirt_call_duration_seconds", "Time a libvirt call took.", ["call"],
                             buckets=_BUCKETS, registry=REGISTRY)
OUTBOX_DEPTH = Gauge("kubekvm_agent_outbox_depth", "Reports waiting to be sent to the server.", registry=REGISTRY)
IMAGE_PULLS = Counter("kubekvm_agent_image_pulls", "Image pulls from the server's store, by outcome.", ["outcome"],
                      registry=REGISTRY)
IMAGE_PULL_BYTES = Counter("kubekvm_agent_image_pull_bytes", "Bytes of images pulled.", registry=REGISTRY)
DOMAINS = Gauge("kubekvm_agent_domains", "This host's KubeKVM domains by observed state.", ["state"],
                registry=REGISTRY)

# What a call is called when it is not one of libvirt's API names (a bounded label, always).
OTHER_CALL = "other"


def exposition() -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(REGISTRY)
