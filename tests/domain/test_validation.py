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


# Everything `int()` (or a hand-made digit check) would take or choke on, and no teacher types.
NOT_NUMBERS = ["+-5", "+5", "²", "٣", "1_0", " 5 ", "5 ", "0x10", "1e3", "5.0", "", "-", "--5", "five",
               "99999999999999999999", "1" * 5000, "\uff15", "5\n", "\x005"]


@pytest.mark.parametrize("raw", NOT_NUMBERS)
def test_the_number_parser_refuses_what_is_not_plain_digits(raw: str) -> None:
    with pytest.raises(ValidationFailed) as error:
        validation.whole_number(raw, field="memoryMib", minimum=0, maximum=10**18, label="Memory")
    assert error.value.field == "memoryMib"
    assert "whole number" in error.value.message


@pytest.mark.parametrize(("raw", "expected"), [("5", 5), ("0", 0), ("007", 7), (12, 12), ("-3", -3)])
def test_the_number_parser_takes_digits_and_ints(raw: str | int, expected: int) -> None:
    assert validation.whole_number(raw, field="n", minimum=-10, maximum=100) == expected


@pytest.mark.parametrize("value", ["0", "-5", "201", 0, 2**31, True, None, 1.5])
def test_replicas_from_a_form_or_graphql_out_of_range_or_no_int(value: object) -> None:
    with pytest.raises(ValidationFailed) as error:
        validation.replicas(value, maximum=200)  # type: ignore[arg-type]
    assert error.value.field == "replicas"


def test_paging_is_refused_out_of_range_not_clamped() -> None:
    assert validation.offset(None) == 0 and validation.offset("") == 0 and validation.offset("100") == 100
    for bad in ("-1", "99999999999999999999", "1e3", str(validation.OFFSET_MAX + 1), -1):
        with pytest.raises(ValidationFailed) as error:
            validation.offset(bad)
        assert error.value.field == "offset"
    assert validation.limit(None, maximum=500) == 500
    for bad in (0, 501, -1, "x"):
        with pytest.raises(ValidationFailed) as error:
            validation.limit(bad, maximum=500)
        assert error.value.field == "limit"


@pytest.mark.parametrize("value", ["a\x00b", "a\x1bb", "line\nbreak", "tab\there", "a\u2028b", "a\ud800b",
                                   "admin\u202egnp.exe", "a\u2066b", "a\x7fb", "a\x85b"])
def test_one_line_text_refuses_control_surrogate_and_bidi_characters(value: str) -> None:
    with pytest.raises(ValidationFailed) as error:
        validation.title(value, fallback="x")
    assert error.value.field == "title"


def test_multiline_text_keeps_newlines_and_tabs_but_not_nul() -> None:
    assert validation.description("one\r\ntwo\tthree") == "one\ntwo\tthree"
    for bad in ("a\x00", "a\rb", "a\ud800", "a\u202eb"):
        with pytest.raises(ValidationFailed) as error:
            validation.description(bad)
        assert error.value.field == "description"


def test_text_has_a_length_limit_and_keeps_ordinary_unicode() -> None:
    assert validation.title("Redes Neuronales — ñandú 🧪 👩‍🔬", fallback="x") == "Redes Neuronales — ñandú 🧪 👩‍🔬"
    with pytest.raises(ValidationFailed):
        validation.title("x" * (validation.TITLE_MAX_LENGTH + 1), fallback="x")


def test_a_report_note_is_kept_with_the_unprintable_replaced() -> None:
    assert validation.note("boom\x00\ud800 ok\nnext") == "boom\ufffd\ufffd ok\nnext"
    assert len(validation.note("x" * 5000)) == validation.NOTE_MAX_LENGTH


def test_storable_names_the_innermost_field_holding_a_lone_surrogate() -> None:
    validation.storable({"title": "fine", "teachers": ["ana"]}, field="input")
    with pytest.raises(ValidationFailed) as error:
        validation.storable({"title": "fine", "teachers": ["ana", "b\udc00"]}, field="input")
    assert error.value.field == "teachers"
    with pytest.raises(ValidationFailed) as error:
        validation.storable(["a", "\ud800"], field="students")
    assert error.value.field == "students"


@pytest.mark.parametrize(("typed", "suggested"), [
    ("D1", "d1"), ("Redes 2025", "redes-2025"), ("Señales y Sistemas", "senales-y-sistemas"),
    ("  lab_1.a  ", "lab-1-a"), ("-lead", "lead"), ("x" * 45, "x" * 40), ("a" * 39 + " b", "a" * 39),
    ("redes-2025", "redes-2025"), ("ﬁsica²", "fisica2"),
])
def test_suggest_name_gives_the_valid_name_a_typed_one_would_become(typed: str, suggested: str) -> None:
    assert validation.suggest_name(typed) == suggested
    assert validation.name(suggested) == suggested


@pytest.mark.parametrize("typed", ["", "---", "日本語", "$(;)"])
def test_suggest_name_gives_nothing_when_nothing_survives(typed: str) -> None:
    assert validation.suggest_name(typed) is None


def test_suggest_name_splits_camel_case_words_only_when_asked() -> None:
    assert validation.suggest_name("TecnologiaDeComputadores", split_words=True) == "tecnologia-de-computadores"
    assert validation.suggest_name("RedesNeuronales", split_words=True) == "redes-neuronales"
    assert validation.suggest_name("HTTPServer", split_words=True) == "http-server"
    assert validation.suggest_name("RedesNeuronales") == "redesneuronales"


def test_a_name_refused_for_its_form_carries_the_suggestion_in_the_message() -> None:
    with pytest.raises(ValidationFailed) as upper:
        validation.name("D1")
    assert upper.value.suggestion == "d1" and upper.value.message.startswith("Use lowercase: d1")
    with pytest.raises(ValidationFailed) as spaced:
        validation.name("Redes 2025")
    assert spaced.value.suggestion == "redes-2025" and "redes-2025" in spaced.value.message
    with pytest.raises(ValidationFailed) as nothing:
        validation.name("$$$")
    assert nothing.value.suggestion is None and "redes-2025" in nothing.value.message


def test_a_pasted_roster_names_every_bad_username_at_once() -> None:
    from kubekvm import roster

    with pytest.raises(ValidationFailed) as error:
        roster.parse("ana\nbad*name\nluis\nx/y\n")
    assert error.value.field == "students"
    assert error.value.message.startswith("2 names are not valid usernames: 'bad*name', 'x/y'.")
    with pytest.raises(ValidationFailed) as one:
        roster.students(["ok", "$bad"])
    assert "'$bad'" in one.value.message


def test_checks_refuse_every_bad_field_at_once_and_one_alone_as_itself() -> None:
    from kubekvm.errors import FieldErrors

    checks = validation.Checks()
    assert checks(lambda: validation.name("ok")) == "ok"
    assert checks(lambda: validation.name("Bad Name")) is None
    assert checks(lambda: validation.replicas(0, maximum=10)) is None
    checks.fail(ValidationFailed("name", "a second word on the name is not the one to fix first"))
    with pytest.raises(FieldErrors) as several:
        checks.done()
    assert [(e.field, e.suggestion) for e in several.value.errors] == [("name", "bad-name"), ("replicas", None)]
    assert several.value.field == "name"  # a caller that shows one message shows the first
    alone = validation.Checks()
    alone(lambda: validation.replicas(0, maximum=10))
    with pytest.raises(ValidationFailed) as one:
        alone.done()
    assert not isinstance(one.value, FieldErrors) and one.value.field == "replicas"
    validation.Checks().done()  # nothing wrong: nothing raised
