"""One normal form for phone numbers (router.numbers)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.numbers import NumberError, normalize, normalize_prefix, try_normalize


@pytest.mark.parametrize(
    "raw",
    [
        "79219462761",
        "+79219462761",
        "89219462761",
        "9219462761",
        "+7 921 946-27-61",
        "8 (921) 946-27-61",
        "+7(921)9462761",
        "  +7 921 946 27 61  ",
        "+7.921.946.27.61",
        "+7\u00a0921\u00a09462761",
        "79219462761@pstn",
        "tel:+79219462761",
        "sip:79219462761@sip.mtt.ru",
        "0079219462761",
    ],
)
def test_russian_mobile_in_any_format(raw: str) -> None:
    """Every way people and MTT write a Russian mobile gives the same E.164 digits."""
    assert normalize(raw) == "79219462761"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("88124241500", "78124241500"),
        ("+7 (812) 424-15-00", "78124241500"),
        ("78124241500@pstn", "78124241500"),
        ("8-800-555-35-35", "78005553535"),
        ("+39 06 1234 5678", "390612345678"),
        ("+44 (0)20 7946 0958", "442079460958"),
        ("0049 30 1234567", "49301234567"),
    ],
)
def test_landlines_and_other_countries(raw: str, expected: str) -> None:
    """Russian trunk 8 becomes 7; other countries keep significant zeros and drop the (0)."""
    assert normalize(raw) == expected


@pytest.mark.parametrize("raw", ["101", "5000", "0012", "883140777716581"])
def test_short_numbers_and_sip_ids_pass_through(raw: str) -> None:
    """Internal short numbers and workplace SIP IDs stay as their digits."""
    assert normalize(raw) == raw


@pytest.mark.parametrize(
    "raw", ["", "   ", "abc", "+", "@pstn", "+7-abc", "12#34", "++79219462761", "+999 123", "+1"]
)
def test_garbage_is_refused(raw: str) -> None:
    """Text that is not a number raises NumberError (a ValueError)."""
    with pytest.raises(NumberError):
        normalize(raw)
    assert issubclass(NumberError, ValueError)


@pytest.mark.parametrize("raw", [None, "", "anonymous", "+"])
def test_try_normalize_returns_none_for_unreadable(raw: str | None) -> None:
    """try_normalize never raises: missing or unreadable input gives None."""
    assert try_normalize(raw) is None


def test_try_normalize_normalises() -> None:
    """try_normalize of a good number is normalize of it."""
    assert try_normalize("8 921 946-27-61") == "79219462761"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("+7812", "7812"), ("8 812", "7812"), ("7812", "7812"), ("+7 (812) 42", "781242"), ("8", "8")],
)
def test_prefixes(raw: str, expected: str) -> None:
    """Prefixes follow the same rules without length checks."""
    assert normalize_prefix(raw) == expected


@pytest.mark.parametrize("raw", ["", "+", "78x", "+7+8"])
def test_bad_prefixes(raw: str) -> None:
    """A prefix that is not digits raises NumberError."""
    with pytest.raises(NumberError):
        normalize_prefix(raw)


_SEPARATORS = st.sampled_from(["", "", "", " ", "-", "(", ")", ".", "\u00a0"])


@st.composite
def formatted_russian_number(draw: st.DrawFn) -> tuple[str, str]:
    """A Russian number (mobile or landline) written with a random prefix and separators."""
    first = draw(st.sampled_from("3489"))
    national = first + "".join(
        draw(st.lists(st.sampled_from("0123456789"), min_size=9, max_size=9))
    )
    prefixes = ["+7", "8", "7"] + (["", "007"] if first == "9" else ["007"])
    prefix = draw(st.sampled_from(prefixes))
    body = "".join(draw(_SEPARATORS) + digit for digit in national)
    suffix = draw(st.sampled_from(["", "", "@pstn", "@sip.mtt.ru"]))
    return f"{prefix}{draw(_SEPARATORS)}{body}{suffix}", "7" + national


@given(formatted_russian_number())
def test_any_formatting_normalises_equal(case: tuple[str, str]) -> None:
    """However a Russian number is written, it normalises to 7 + its ten national digits."""
    raw, expected = case
    assert normalize(raw) == expected


@given(formatted_russian_number())
def test_normal_form_is_stable(case: tuple[str, str]) -> None:
    """Normalising a normal form changes nothing (rules keys and callers compare equal)."""
    raw, _ = case
    assert normalize(normalize(raw)) == normalize(raw)


@given(st.text(max_size=40))
def test_try_normalize_never_raises(raw: str) -> None:
    """Whatever a notification carries, try_normalize returns digits or None."""
    result = try_normalize(raw)
    assert result is None or result.isdigit()
