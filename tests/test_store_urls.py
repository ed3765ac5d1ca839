"""URL normalisation and registrable domains: fixed cases and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.provisional import urls

from modelsieve.hashlists.errors import InvalidEntryError
from modelsieve.hashlists.urls import normalise_url, normalised_registrable_domain, registrable_domain, url_key, url_prefix_keys


@pytest.mark.parametrize(
    "given_url, normalised",
    [
        ("HTTP://ExAmple.COM:80/a/../b/./c?x=1#frag", "http://example.com/b/c?x=1"),
        ("https://user:pw@Bücher.example:443", "https://xn--bcher-kva.example/"),
        ("example.com/path", "http://example.com/path"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("http://a.example./%7euser", "http://a.example/~user"),
    ],
)
def test_normalised_forms(given_url: str, normalised: str) -> None:
    assert normalise_url(given_url) == normalised


@pytest.mark.parametrize("bad", ["", "ftp://x.example/", "http://", "http://exa mple.com/", "http://a..b/", "javascript:alert(1)"])
def test_what_is_not_a_listable_url_is_refused(bad: str) -> None:
    with pytest.raises(InvalidEntryError):
        normalise_url(bad)


@pytest.mark.parametrize(
    "host, domain",
    [
        ("www.bbc.co.uk", "bbc.co.uk"),
        ("https://a.b.example.com/x", "example.com"),
        ("my-app.vercel.app", "my-app.vercel.app"),  # private suffixes count: one app, not the platform
        ("10.0.0.1", "10.0.0.1"),
        ("intranet", "intranet"),
    ],
)
def test_registrable_domains_come_from_the_bundled_public_suffix_list(host: str, domain: str) -> None:
    assert registrable_domain(host) == domain


def test_prefix_keys_cover_parent_paths_at_segment_boundaries() -> None:
    assert url_prefix_keys("https://a.example/x/y?q=1") == [
        "a.example/x/y?q=1",
        "a.example/x/y",
        "a.example/x/",
        "a.example/x",
        "a.example/",
    ]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_normalises_or_is_refused_cleanly(text: str) -> None:
    try:
        normalised = normalise_url(text)
    except InvalidEntryError:
        return
    assert normalise_url(normalised) == normalised
    keys = url_prefix_keys(normalised)
    assert keys[0] == url_key(normalised) and keys[-1].endswith("/")
    assert registrable_domain(normalised)


@settings(max_examples=100, deadline=None)
@given(urls())
def test_real_looking_urls_normalise_idempotently(url: str) -> None:
    normalised = normalise_url(url)
    assert normalise_url(normalised) == normalised
    assert normalised.startswith(("http://", "https://"))


@settings(max_examples=200, deadline=None)
@given(st.one_of(urls(), st.sampled_from(["http://[::1]:8080/x", "https://a.b.example.co.uk:8443/p?q", "http://127.0.0.1/", "http://app.vercel.app"])))
def test_the_domain_of_a_normalised_url_needs_no_second_parse(url: str) -> None:
    """What the matcher uses on its already-normalised URL agrees with `registrable_domain` of the input."""
    try:
        normalised = normalise_url(url)
    except InvalidEntryError:
        return
    assert normalised_registrable_domain(normalised) == registrable_domain(url)
