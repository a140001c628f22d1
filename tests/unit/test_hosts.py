"""Reading Host headers and matching them against DATESYNC_ALLOWED_HOSTS patterns (no server)."""

import pytest

from datesync.web.api.middleware import _origin_key
from datesync.web.hosts import HostPatterns, host_name


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Example.COM", "example.com"),
        ("example.com.:8443", "example.com"),
        ("127.0.0.1:8000", "127.0.0.1"),
        ("[::1]:8000", "[::1]"),
        ("[FD00::1]", "[fd00::1]"),
        ("example.com:99999", None),
        ("example.com:", None),
        ("example.com:80:80", None),
        ("user@example.com", None),
        ("example.com/path", None),
        ("", None),
        ("::1", None),  # IPv6 must be bracketed in a Host header
    ],
)
def test_host_name(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_patterns() -> None:
    patterns = HostPatterns(["localhost", ".example.com", "[::1]"])
    assert [patterns.match(n) for n in ("localhost", "example.com", "a.example.com", "badexample.com",
                                        "example.com.evil", "[::1]", "127.0.0.1")] == [
        True, True, True, False, False, True, False]
    assert HostPatterns(["*"]).match("anything")


def test_origin_key() -> None:
    assert _origin_key("https://Example.com") == ("https", "example.com", 443)
    assert _origin_key("http://127.0.0.1:8000") == ("http", "127.0.0.1", 8000)
    assert _origin_key("http://[::1]:80") == ("http", "::1", 80)
    for bad in ("null", "", "https://", "ftp://example.com", "https://example.com:99999", "https://u@example.com",
                "https://example.com/path"):
        assert _origin_key(bad) is None, bad
