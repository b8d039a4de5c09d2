"""
A sign-in provider's failure, told to the person in their language: the
sentence around the provider's name and what was wrong are translated
together; the error itself keeps the English sentence for the log.
"""

from __future__ import annotations

import contextvars

import pytest

from clickpass import i18n
from clickpass.upstream.http import UpstreamError
from clickpass.upstream.tokens import unverified_header


def _in(language: str, message: str) -> str:
    def said() -> str:
        i18n.current.set(language)
        return i18n.translate(message)

    return contextvars.copy_context().run(said)


def test_an_untrusted_token_in_german_and_spanish() -> None:
    """A malformed token from "Example ID": one sentence, in German or Spanish, the name kept."""
    with pytest.raises(UpstreamError) as refused:
        unverified_header("Example ID", "not-a-token")
    assert refused.value.reason == "malformed_token"
    assert refused.value.message == (
        "Example ID could not be trusted: its sign-in token is malformed. The sign-in was stopped."
    )
    assert _in("de", refused.value.message) == (
        "Der Antwort von Example ID kann nicht vertraut werden: das Anmeldetoken ist "
        "fehlerhaft. Die Anmeldung wurde abgebrochen."
    )
    assert _in("es", refused.value.message) == (
        "No se pudo confiar en Example ID: su token de inicio de sesión está mal formado. "
        "Se detuvo el inicio de sesión."
    )
