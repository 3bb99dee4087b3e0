"""One normal form for phone numbers, used for rules and notifications alike.

MTT writes the same number as ``78124241500``, ``+78124241500``, ``88124241500`` or
``78124241500@pstn``; people write ``+7 (812) 424-15-00``. All of them become ``78124241500``:
E.164 digits without the ``+``. Short internal numbers and SIP IDs pass through as their digits.
A ``tel:``/``sip:`` scheme and the ``00`` international prefix (``0049...``) are understood too.
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

_SEPARATORS = re.compile(r"[\s\-().\u00a0]")
_ALLOWED = re.compile(r"^\+?[0-9]+$")
_SCHEME = re.compile(r"^(?:tel|sips?):", re.IGNORECASE)
# "00" + country code + number: at least 8 digits after the prefix, so short codes like 001 stay.
_MIN_INTERNATIONAL_AFTER_00 = 8


class NumberError(ValueError):
    """The text is not a phone number we can normalise."""


CACHE_SIZE = 16384
"""Numbers normalised lately, remembered (a returning caller costs a dict lookup). Keys come from
notifications: worst-case memory is this many strings of up to 256 characters with their
results, about 10 MB; ``/status`` shows it as "number_cache"."""


@lru_cache(maxsize=CACHE_SIZE)
def normalize(raw: str) -> str:
    """Return the E.164 digits of ``raw`` (no ``+``); raise :class:`NumberError` if it is not one.

    Russian trunk form ``8XXXXXXXXXX`` (11 digits) means ``7XXXXXXXXXX``; a ``@host`` suffix
    (``78124241500@pstn``) is dropped. Numbers of other countries must carry ``+``.
    """
    text = _SCHEME.sub("", raw.strip()).split("@", 1)[0]
    text = _SEPARATORS.sub("", text)
    if not text or not _ALLOWED.match(text):
        raise NumberError(f"not a phone number: {raw!r}")
    if text.startswith("00") and len(text) - 2 >= _MIN_INTERNATIONAL_AFTER_00:
        text = "+" + text[2:]
    digits = text.lstrip("+")
    if text.startswith("+"):
        try:
            parsed = phonenumbers.parse(text, None)
        except phonenumbers.NumberParseException as exc:
            raise NumberError(f"not a phone number: {raw!r} ({exc})") from exc
        # format_number keeps a significant leading zero (Italy: +39 06 ...) that
        # national_number alone would drop.
        e164: str = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        return e164[1:]
    if len(digits) == 11 and digits[0] == "8":
        return "7" + digits[1:]
    if len(digits) == 10 and digits[0] == "9":
        # A Russian mobile written without the trunk prefix (921 946-27-61).
        return "7" + digits
    return digits


def normalize_prefix(raw: str) -> str:
    """Normalise a number *prefix* (``+7812``, ``8 812``): same rules, without length checks."""
    text = _SEPARATORS.sub("", raw.strip())
    if not text or not _ALLOWED.match(text):
        raise NumberError(f"not a number prefix: {raw!r}")
    if text.startswith("+"):
        return text[1:]
    if text.startswith("8") and len(text) > 1:
        return "7" + text[1:]
    return text


def try_normalize(raw: str | None) -> str | None:
    """:func:`normalize`, or ``None`` for missing or unreadable input (never raises)."""
    if not raw:
        return None
    try:
        return normalize(raw)
    except NumberError:
        return None
