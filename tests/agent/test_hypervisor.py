"""The libvirt adapter on libvirt's test driver: what it lists, and what it must survive."""

from __future__ import annotations

import uuid

from agent.hypervisor import Hypervisor

TRANSIENT = """<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type>hvm</type></os></domain>"""


async def test_a_strangers_transient_domain_does_not_break_the_listing() -> None:
    hypervisor = Hypervisor("test:///default")
    await hypervisor.open()
    name = f"stranger-{uuid.uuid4().hex[:6]}"
    try:
        # Someone's `virsh create`: a running domain with no persistent config.
        await hypervisor._call(lambda connection: connection.createXML(TRANSIENT.format(name=name), 0))
        listed = await hypervisor.list_domains()
        assert name in listed and listed[name].metadata is None and listed[name].active
    finally:
        await hypervisor._call(lambda connection: connection.lookupByName(name).destroy())
        await hypervisor.close()
