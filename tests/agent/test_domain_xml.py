"""Domain XML: what libvirt gets for a machine, and the metadata read back from it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

from agent.assignment import Assignment, TemplateSpec
from agent.domain_xml import (
    NEVER_POWERED,
    MachineMetadata,
    domain_xml,
    metadata_xml,
    parse_machine_metadata,
)
from agent.images import DirectBoot, Images


def build(*, boot: DirectBoot | None = None, os_name: str = "linux", domain_type: str = "qemu",
          vm_name: str = "lab-1") -> tuple[ET.Element, MachineMetadata]:
    assignment = Assignment(
        machine_id="m1", vm_name="lab-1", deployment="lab", index=1, desired="running",
        reset_generation=3, power_generation=4,
        template=TemplateSpec(name="tiny", image="tiny-linux.qcow2", os="linux", vcpus=1,
                              memory_mib=64, disk_gib=0),
    )
    assignment = replace(
        assignment, vm_name=vm_name, template=replace(assignment.template, os=os_name)
    )
    metadata = MachineMetadata.for_assignment(assignment)
    xml = domain_xml(
        assignment,
        domain_type=domain_type,
        overlay=Path("/state/disks/kubekvm-lab-1.qcow2"),
        serial_log=Path("/state/logs/kubekvm-lab-1.log"),
        boot=boot,
        metadata=metadata,
    )
    return ET.fromstring(xml), metadata


def test_domain_has_the_machine_resources_and_devices() -> None:
    root, _ = build(domain_type="kvm")
    assert root.get("type") == "kvm"
    assert root.findtext("name") == "kubekvm-lab-1"
    assert root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert root.findtext("memory") == "64"
    assert root.findtext("vcpu") == "1"
    assert root.find("features/acpi") is not None
    assert root.findtext("on_poweroff") == "destroy"
    assert root.findtext("on_reboot") == "restart"
    disk = root.find("devices/disk")
    assert disk.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disk.find("source").get("file") == "/state/disks/kubekvm-lab-1.qcow2"  # type: ignore[union-attr]
    assert disk.find("target").get("bus") == "virtio"  # type: ignore[union-attr]
    serial = root.find("devices/serial")
    assert serial.get("type") == "file"  # type: ignore[union-attr]
    assert serial.find("source").get("path") == "/state/logs/kubekvm-lab-1.log"  # type: ignore[union-attr]
    graphics = root.find("devices/graphics")
    assert graphics.get("type") == "vnc"  # type: ignore[union-attr]
    assert graphics.get("autoport") == "yes"  # type: ignore[union-attr]
    assert graphics.get("listen") == "127.0.0.1"  # type: ignore[union-attr]
    assert graphics.find("listen").get("address") == "127.0.0.1"  # type: ignore[union-attr]
    assert root.find("devices/video/model").get("type") == "cirrus"  # type: ignore[union-attr]
    assert root.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    assert root.find("os/kernel") is None


def test_text_from_the_server_is_escaped_not_interpreted() -> None:
    root, _ = build(vm_name="</title><devices><disk/></devices><title>")
    assert root.findtext("title") == "</title><devices><disk/></devices><title> (KubeKVM)"
    assert len(root.findall("devices/disk")) == 1


def test_windows_gets_sata_and_local_time() -> None:
    root, _ = build(os_name="Windows XP")
    assert root.find("devices/disk/target").get("bus") == "sata"  # type: ignore[union-attr]
    assert root.find("clock").get("offset") == "localtime"  # type: ignore[union-attr]


def test_direct_boot_uses_kernel_initrd_and_extra_cmdline(image_dir: Path) -> None:
    tmp_path = image_dir
    images = Images(image_dir)
    assert images.direct_boot("tiny-linux.qcow2") is None
    (tmp_path / "tiny-linux.kernel").write_bytes(b"k")
    (tmp_path / "tiny-linux.initrd").write_bytes(b"i")
    (tmp_path / "tiny-linux.cmdline").write_text("kubekvm.poweroff_after=3\n")
    boot = images.direct_boot("tiny-linux.qcow2")
    assert boot is not None
    root, _ = build(boot=boot)
    assert root.findtext("os/kernel") == str(tmp_path / "tiny-linux.kernel")
    assert root.findtext("os/initrd") == str(tmp_path / "tiny-linux.initrd")
    assert root.findtext("os/cmdline") == (
        "console=tty0 console=ttyS0 quiet panic=-1 no_timer_check kubekvm.hostname=lab-1 "
        "kubekvm.poweroff_after=3"
    )
    assert root.find("os/boot") is None


def test_metadata_round_trips_through_the_domain_xml() -> None:
    root, metadata = build()
    assert metadata.power_generation == NEVER_POWERED
    parsed = parse_machine_metadata(ET.tostring(root, encoding="unicode"))
    assert parsed == metadata
    assert parsed.reset_generation == 3  # type: ignore[union-attr]
    # The form virDomainGetMetadata returns: the element without its namespace.
    assert parse_machine_metadata(metadata_xml(metadata)) == metadata


def test_domains_without_our_metadata_are_not_ours() -> None:
    assert parse_machine_metadata("<domain><name>x</name></domain>") is None
    assert parse_machine_metadata("<domain><metadata><other/></metadata></domain>") is None
    assert parse_machine_metadata("not xml") is None
    broken = metadata_xml(
        MachineMetadata("m", "lab", 1, 0, 0, "t")
    ).replace("<index>1</index>", "<index>one</index>")
    assert parse_machine_metadata(broken) is None
