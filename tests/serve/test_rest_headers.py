"""The infer route's view of an ASGI scope's headers (no Ray)."""

from __future__ import annotations

from serve.protocol.rest import AsgiHeaders

RAW = [
    (b"host", b"127.0.0.1:8000"),
    (b"x-user", b"alice"),
    (b"content-length", b"42"),
    (b"x-user", b"mallory"),
    (b"x-caf\xc3\xa9", b"cr\xe8me"),
]


def test_lookups_decode_latin1_and_the_first_of_repeated_headers_wins() -> None:
    headers = AsgiHeaders(RAW)
    assert headers.get("x-user") == "alice" and headers["content-length"] == "42"
    assert headers.get("x-cafÃ©") == "crème"  # latin-1 both ways, as ASGI servers pass them
    assert headers.get("authorization") is None and headers.get("absent", "d") == "d"
    assert "x-user" in headers and "absent" not in headers


def test_it_is_a_mapping_with_one_entry_per_name() -> None:
    headers = AsgiHeaders(RAW)
    assert list(headers) == ["host", "x-user", "content-length", "x-cafÃ©"]
    assert len(headers) == 4
    assert dict(headers)["x-user"] == "alice"
