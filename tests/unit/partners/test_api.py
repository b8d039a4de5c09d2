"""The partner API's reading of request bodies: standard JSON, the OpenAPI document's types."""

from __future__ import annotations

from typing import Any

import pytest

from clickpass.partners import api


@pytest.mark.parametrize("body", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -1e400}', b"1e999"])
def test_non_finite_numbers_are_not_json(body: bytes) -> None:
    """NaN, Infinity and numbers beyond a float's range are refused, not read as inf or nan."""
    with pytest.raises(ValueError, match=r"not a JSON number|too large"):
        api.parse_json(body)


def test_finite_numbers_are_read() -> None:
    assert api.parse_json(b'{"a": 1.5e3, "b": -2}') == {"a": 1500.0, "b": -2}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": ["a"]}, "name must be a string, not an array"),
        ({"name": 1.0}, "name must be a string, not a number"),
        ({"name": True}, "name must be a string, not a boolean"),
        ({"webhook_url": None}, "webhook_url must be a string, not null"),
        ({"return_to_urls": "https://p.example/r"}, "return_to_urls must be an array of strings"),
        ({"required_fields": ["email", 3]}, "required_fields must be an array of strings"),
        ({"connect_url": "https://p.example/\x00"}, "connect_url must not contain control"),
    ],
)
def test_settings_must_have_their_documented_types(changes: dict[str, Any], message: str) -> None:
    """Nothing is converted: a value of another JSON type is a 422 naming the setting."""
    with pytest.raises(api.ApiError) as raised:
        api.check_types(changes)
    assert raised.value.status == 422
    assert message in raised.value.message


def test_documented_types_pass() -> None:
    api.check_types({"name": "Shop", "return_to_urls": ["https://p.example/r?*"]})
