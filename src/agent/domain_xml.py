"""Domain XML: the libvirt definition of one machine, and the KubeKVM metadata inside it.

The XML is built with ``xml.etree`` only, so every value from the server reaches libvirt
escaped. Each domain carries a ``<metadata>`` element in the KubeKVM namespace; it is the
agent's only memory. It says which machine owns the domain and which reset and power
generations the agent last acted on, so a restarted agent knows what is already done. The
agent never touches a domain without it.

Machines get a video card and VNC on 127.0.0.1 only (the agent tunnels it to the server for
the browser console, ``agent.console``), the serial console in a log file, ACPI (so
``shutdown`` reaches the guest), and ``on_poweroff=destroy``: a guest that powers itself off
ends its QEMU process, which libvirt reports as an event.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from agent.assignment import Assignment
from agent.images import DirectBoot
from agent.names import guest_hostname

NAMESPACE = "https://kubekvm.io/xmlns/machine/1"
PREFIX = "kubekvm"
# Kernel messages go to both consoles: the screen (tty0), which the browser console shows, and
# the serial port (ttyS0, last, so it is also /dev/console), which the serial log keeps.
BASE_CMDLINE = "console=tty0 console=ttyS0 quiet panic=-1 no_timer_check"
# Recorded at (re)definition: "no power request acted on since the overlay was made", so
# the first desired=running always starts a fresh or freshly reset machine.
NEVER_POWERED = -1

ET.register_namespace(PREFIX, NAMESPACE)


@dataclass(frozen=True, slots=True)
class MachineMetadata:
    machine_id: str
    deployment: str
    index: int
    reset_generation: int
    power_generation: int
    template: str

    @classmethod
    def for_assignment(
        cls, assignment: Assignment, *, power_generation: int = NEVER_POWERED
    ) -> MachineMetadata:
        return cls(
            machine_id=assignment.machine_id,
            deployment=assignment.deployment,
            index=assignment.index,
            reset_generation=assignment.reset_generation,
            power_generation=power_generation,
            template=assignment.template.name,
        )


_FIELDS = (
    ("id", "machine_id"),
    ("deployment", "deployment"),
    ("index", "index"),
    ("resetGeneration", "reset_generation"),
    ("powerGeneration", "power_generation"),
    ("template", "template"),
)
_INT_FIELDS = frozenset({"index", "reset_generation", "power_generation"})


def metadata_element(metadata: MachineMetadata, *, namespaced: bool = True) -> ET.Element:
    """``namespaced=False`` gives the form ``virDomainSetMetadata`` wants (it adds the ns)."""

    def tag(name: str) -> str:
        return f"{{{NAMESPACE}}}{name}" if namespaced else name

    machine = ET.Element(tag("machine"))
    for element_name, attribute in _FIELDS:
        ET.SubElement(machine, tag(element_name)).text = str(getattr(metadata, attribute))
    return machine


def metadata_xml(metadata: MachineMetadata) -> str:
    return ET.tostring(metadata_element(metadata, namespaced=False), encoding="unicode")


def machine_uuid(assignment: Assignment) -> str:
    """A UUID fixed by machine and name: defining a domain twice can only update it, since
    libvirt refuses a second definition of a name under another UUID."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{NAMESPACE}/{assignment.machine_id}/"
                                               f"{assignment.domain_name}"))


def parse_machine_metadata(xml: str) -> MachineMetadata | None:
    """Reads KubeKVM metadata from a whole domain XML or from ``virDomainGetMetadata``."""
    try:
        # libvirt's own output (or ours): trusted, and no DTDs or entities are involved.
        root = ET.fromstring(xml)  # noqa: S314
    except ET.ParseError:
        return None
    if root.tag == "domain":
        machine = root.find(f"metadata/{{{NAMESPACE}}}machine")
    elif root.tag in (f"{{{NAMESPACE}}}machine", "machine"):
        machine = root
    else:
        machine = None
    if machine is None:
        return None
    namespace = f"{{{NAMESPACE}}}" if machine.tag.startswith("{") else ""
    values: dict[str, str | int] = {}
    for element_name, attribute in _FIELDS:
        text = machine.findtext(f"{namespace}{element_name}")
        if text is None:
            return None
        if attribute in _INT_FIELDS:
            try:
                values[attribute] = int(text)
            except ValueError:
                return None
        else:
            values[attribute] = text
    return MachineMetadata(**values)  # type: ignore[arg-type]


def domain_xml(
    assignment: Assignment,
    *,
    domain_type: str,
    overlay: Path,
    serial_log: Path,
    boot: DirectBoot | None,
    metadata: MachineMetadata,
    domain_uuid: str | None = None,
) -> str:
    """``domain_uuid``: keep an existing domain's UUID when redefining it."""
    template = assignment.template
    domain = ET.Element("domain", type=domain_type)
    ET.SubElement(domain, "name").text = assignment.domain_name
    ET.SubElement(domain, "uuid").text = domain_uuid or machine_uuid(assignment)
    ET.SubElement(domain, "title").text = f"{assignment.vm_name} (KubeKVM)"
    ET.SubElement(domain, "metadata").append(metadata_element(metadata))
    ET.SubElement(domain, "memory", unit="MiB").text = str(template.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(template.vcpus)

    os_element = ET.SubElement(domain, "os")
    ET.SubElement(os_element, "type", arch="x86_64", machine="pc").text = "hvm"
    if boot is not None:
        ET.SubElement(os_element, "kernel").text = str(boot.kernel)
        ET.SubElement(os_element, "initrd").text = str(boot.initrd)
        hostname = guest_hostname(assignment.deployment, assignment.index)
        cmdline = f"{BASE_CMDLINE} kubekvm.hostname={hostname} {boot.extra_cmdline}"
        ET.SubElement(os_element, "cmdline").text = cmdline.strip()
    else:
        ET.SubElement(os_element, "boot", dev="hd")

    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    # Windows keeps its hardware clock in local time; everything else in UTC.
    ET.SubElement(domain, "clock", offset="localtime" if template.is_windows else "utc")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"

    devices = ET.SubElement(domain, "devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2", discard="unmap")
    ET.SubElement(disk, "source", file=str(overlay))
    # Stock Windows installs have no virtio driver and would not find their boot disk.
    if template.is_windows:
        ET.SubElement(disk, "target", dev="sda", bus="sata")
    else:
        ET.SubElement(disk, "target", dev="vda", bus="virtio")

    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(serial_log))
    ET.SubElement(serial, "target", port="0")

    graphics = ET.SubElement(
        devices, "graphics", type="vnc", port="-1", autoport="yes", listen="127.0.0.1"
    )
    ET.SubElement(graphics, "listen", type="address", address="127.0.0.1")
    # Said rather than left to libvirt's default: a screen the console can show, which every
    # guest (Windows XP's own drivers included) can drive.
    video = ET.SubElement(devices, "video")
    ET.SubElement(video, "model", type="cirrus")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")
