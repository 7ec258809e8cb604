"""The image rules over what qemu-img says (plain dictionaries, as its JSON)."""

from __future__ import annotations

import pytest

from kubekvm import image_rules
from kubekvm.errors import ValidationFailed
from kubekvm.image_rules import ImageRefused

GIB = 1024**3


def info(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {"format": "qcow2", "virtual-size": GIB,
                               "format-specific": {"type": "qcow2", "data": {"corrupt": False}}}
    base.update(fields)
    return base


def reason(raw: dict[str, object], *, declared: str | None = "qcow2", size: int = 4096,
           limit: int = 10 * GIB) -> str:
    with pytest.raises(ImageRefused) as refused:
        image_rules.check_info(raw, declared=declared, file_size=size, max_virtual_bytes=limit)
    assert refused.value.field == "file" and refused.value.message
    return refused.value.reason


def test_a_standalone_qcow2_is_taken() -> None:
    taken = image_rules.check_info(info(), declared="qcow2", file_size=4096, max_virtual_bytes=10 * GIB)
    assert (taken.format, taken.virtual_size) == ("qcow2", GIB)


def test_each_refusal_says_which_rule() -> None:
    assert reason(info(**{"backing-filename": "/etc/shadow"})) == "BACKING_FILE"
    assert reason(info(**{"format-specific": {"data": {"data-file": "/dev/sda"}}})) == "DATA_FILE"
    assert reason(info(**{"format-specific": {"data": {"encrypt": {"format": "luks"}}}})) == "ENCRYPTED"
    assert reason(info(format="vmdk")) == "UNKNOWN_FORMAT"
    assert reason(info(format="raw", **{"virtual-size": 512})) == "NOT_QCOW2"
    assert reason(info(format="raw"), declared=None) == "UNDECLARED_RAW"
    assert reason(info(format="raw"), declared="raw", size=1000) == "NOT_A_DISK"
    assert reason(info(**{"virtual-size": 11 * GIB})) == "TOO_LARGE"


def test_the_message_of_a_backing_file_names_it() -> None:
    with pytest.raises(ImageRefused, match="/etc/shadow"):
        image_rules.check_info(info(**{"backing-filename": "/etc/shadow"}), declared=None, file_size=1,
                               max_virtual_bytes=GIB)


def test_qemu_img_check_corruptions_refuse_leaks_do_not() -> None:
    image_rules.check_consistency({"leaks": 3}, status=3)
    with pytest.raises(ImageRefused) as refused:
        image_rules.check_consistency({"corruptions": 1}, status=2)
    assert refused.value.reason == "TRUNCATED"


def test_digests_and_file_names() -> None:
    digest = "sha256:" + "ab" * 32
    assert image_rules.file_name(digest) == f"sha256-{'ab' * 32}.qcow2"
    assert image_rules.digest_of_file_name(image_rules.file_name(digest)) == digest
    assert image_rules.digest_of_file_name("ubuntu.qcow2") is None
    for bad in ("sha256:AB", "md5:" + "0" * 32, "sha256:" + "0" * 64 + "/.."):
        with pytest.raises(ValidationFailed):
            image_rules.digest(bad)


def test_the_declared_format_comes_from_the_name_or_is_given() -> None:
    assert image_rules.declared_format("disk.QCOW2", None) == "qcow2"
    assert image_rules.declared_format("disk.img", None) == "raw"
    assert image_rules.declared_format("disk.bin", None) is None
    assert image_rules.declared_format("disk.bin", "raw") == "raw"
    with pytest.raises(ValidationFailed):
        image_rules.declared_format("disk.bin", "vmdk")


def test_a_publish_job_its_host_never_took_up_lapses() -> None:
    from datetime import UTC, datetime, timedelta

    from kubekvm.image_fields import PICKUP_SECONDS, PublishJob

    now = datetime.now(UTC)
    job = PublishJob(id="a1", template="t", requested_by="ta", at=now)
    assert job.active
    old = job.model_copy(update={"at": (now - timedelta(seconds=PICKUP_SECONDS + 1)).replace(tzinfo=None)})
    assert not old.active
    assert old.model_copy(update={"state": "uploading"}).active
    assert not job.model_copy(update={"state": "done"}).active
