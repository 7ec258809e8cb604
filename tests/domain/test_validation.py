"""Name and number rules shared by pages and GraphQL."""

from __future__ import annotations

import pytest

from kubekvm import validation
from kubekvm.errors import ValidationFailed

HOSTILE_NAMES = ["with space", "a;b", "$(reboot)", "../etc", "Upper", "ñandú", "x" * 41, "",
                 "-lead", "trail-", "a_b", "a.b"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_bad_names_are_refused_with_the_field(name: str) -> None:
    with pytest.raises(ValidationFailed) as error:
        validation.name(name)
    assert error.value.field == "name" and error.value.message


@pytest.mark.parametrize("name", ["a", "redes-2025", "x" * 40, "1a", "a-b-c"])
def test_good_names(name: str) -> None:
    assert validation.name(name) == name


@pytest.mark.parametrize("value", [0, -1, 10**9, 201, True])
def test_bad_replicas(value: int) -> None:
    with pytest.raises(ValidationFailed) as error:
        validation.replicas(value, maximum=200)
    assert error.value.field == "replicas"


@pytest.mark.parametrize("image", ["../x.qcow2", "x.img", "a/b.qcow2", "-x.qcow2", "$(x).qcow2"])
def test_bad_images(image: str) -> None:
    with pytest.raises(ValidationFailed):
        validation.image(image)
