"""KubeKVM host agent: makes one hypervisor's libvirt domains match what the server assigns.

The server decides which machines a host should run (``agent.assignment``); the agent reads
what libvirt actually has (``agent.hypervisor``), takes the smallest idempotent step towards
the desired state (``agent.reconciler``) and reports what it observes back to the server
(``agent.client``). Nothing here remembers anything that libvirt and the state directory do
not: killing the agent at any moment and starting it again converges to the same result.
"""

__version__ = "0.1.0"
