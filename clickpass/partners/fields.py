"""
The profile fields a partner may ask for at registration: the nine of
SReg 1.1, their AX type URIs, how each is pre-filled from a Clickpass
account, and how each is validated.

Pure functions: nothing here touches the database, the network or a
request. It must never invent a value the person did not give or hold.
"""

from __future__ import annotations

import datetime
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from clickpass.accounts.service import Account, AccountError, check_email
from clickpass.i18n import N_, Text


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    ax_type: str
    input_type: str = "text"
    autocomplete: str = "on"
    hint: str = ""


FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field(
            "nickname",
            N_("Nickname"),
            "http://axschema.org/namePerson/friendly",
            "text",
            "nickname",
        ),
        Field("email", N_("Email address"), "http://axschema.org/contact/email", "email", "email"),
        Field("fullname", N_("Full name"), "http://axschema.org/namePerson", "text", "name"),
        Field(
            "dob",
            N_("Date of birth"),
            "http://axschema.org/birthDate",
            "date",
            "bday",
            "YYYY-MM-DD",
        ),
        Field("gender", N_("Gender"), "http://axschema.org/person/gender", "select", "sex"),
        Field(
            "postcode",
            N_("Postal code"),
            "http://axschema.org/contact/postalCode/home",
            "text",
            "postal-code",
        ),
        Field(
            "country",
            N_("Country"),
            "http://axschema.org/contact/country/home",
            "text",
            "country",
            "Two letters, e.g. GB",
        ),
        Field(
            "language",
            N_("Language"),
            "http://axschema.org/pref/language",
            "text",
            "language",
            "e.g. en or en-GB",
        ),
        Field(
            "timezone",
            N_("Time zone"),
            "http://axschema.org/pref/timezone",
            "text",
            "off",
            "e.g. Europe/London",
        ),
    )
}

ORDER = tuple(FIELDS)

# Older AX type URIs some relying parties still send.
AX_ALIASES = {
    "http://schema.openid.net/contact/email": "email",
    "http://schema.openid.net/namePerson/friendly": "nickname",
    "http://schema.openid.net/namePerson": "fullname",
}


def field_for_ax_type(type_uri: str) -> str | None:
    for f in FIELDS.values():
        if f.ax_type == type_uri:
            return f.name
    return AX_ALIASES.get(type_uri)


def parse_list(text: str | Iterable[str]) -> tuple[str, ...]:
    """A field list (comma-separated text or names) in canonical order; unknown names raise."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    unknown = sorted({n for n in names if n and n not in FIELDS})
    if unknown:
        raise ValueError(
            Text(
                N_("unknown profile field %(names)s (known: %(known)s)"),
                names=", ".join(unknown),
                known=", ".join(ORDER),
            )
        )
    wanted = {n for n in names if n}
    return tuple(n for n in ORDER if n in wanted)


def prefill(account: Account) -> dict[str, str]:
    """What a Clickpass account already says for each field (its email only once verified)."""
    values = {"email": account.email} if account.email_verified else {}
    if account.display_name:
        values["fullname"] = account.display_name
        values["nickname"] = account.display_name.split()[0][:64]
    else:
        values["nickname"] = account.email.split("@")[0][:64]
    return values


_NO_CONTROL = re.compile(r"^[^\x00-\x1f\x7f]*$")
_POSTCODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 \-]{0,15}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z]{2})?$")


def validate(name: str, value: str, today: datetime.date) -> str:
    """The normalised value, or L{ValueError} with one sentence for the person."""
    label = Text(FIELDS[name].label)
    value = value.strip()
    if not _NO_CONTROL.match(value):
        raise ValueError(
            Text(N_("%(label)s contains characters that are not allowed."), label=label)
        )
    if name == "email":
        try:
            return check_email(value)
        except AccountError as e:
            raise ValueError(str(e)) from None
    if name in ("nickname", "fullname"):
        limit = 64 if name == "nickname" else 255
        if len(value) > limit:
            raise ValueError(
                Text(N_("%(label)s can be at most %(limit)d characters."), label=label, limit=limit)
            )
        return value
    if name == "dob":
        try:
            born = datetime.date.fromisoformat(value)
        except ValueError:
            raise ValueError(
                Text(N_("%(label)s: write the date as YYYY-MM-DD."), label=label)
            ) from None
        if born > today or born.year < 1900:
            raise ValueError(Text(N_("%(label)s must be a real date in the past."), label=label))
        return born.isoformat()
    if name == "gender":
        if value not in ("M", "F"):
            raise ValueError(Text(N_("%(label)s: choose one of the options."), label=label))
        return value
    if name == "postcode":
        if not _POSTCODE.match(value):
            raise ValueError(
                Text(
                    N_("%(label)s can hold letters, digits, spaces and dashes (16 at most)."),
                    label=label,
                )
            )
        return value.upper()
    if name == "country":
        value = value.upper()
        if not _COUNTRY.match(value):
            raise ValueError(
                Text(N_("%(label)s: use the two-letter country code, e.g. GB."), label=label)
            )
        return value
    if name == "language":
        if not _LANGUAGE.match(value):
            raise ValueError(
                Text(N_("%(label)s: use a language code such as en or en-GB."), label=label)
            )
        return value
    if name == "timezone":
        if value not in _zones():
            raise ValueError(
                Text(N_("%(label)s: use a zone name such as Europe/London."), label=label)
            )
        return value
    raise ValueError(
        Text(N_("%(label)s is not a field Clickpass knows."), label=label)
    )  # pragma: no cover


_ZONES: frozenset[str] | None = None


def _zones() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(zoneinfo.available_timezones())
    return _ZONES


def check_form(
    asked: Iterable[str], required: Iterable[str], given: Mapping[str, str], today: datetime.date
) -> tuple[dict[str, str], dict[str, str]]:
    """
    Validate a registration form: the values to release (empty optional
    fields left out) and the problems, by field name.
    """
    must = set(required)
    values: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name in asked:
        raw = given.get(name, "").strip()
        if not raw:
            if name in must:
                errors[name] = Text(
                    N_("%(label)s is required by this site."), label=Text(FIELDS[name].label)
                )
            continue
        try:
            values[name] = validate(name, raw, today)
        except ValueError as e:
            # The message itself (a Text keeps its parameters, for translation).
            errors[name] = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    return values, errors
