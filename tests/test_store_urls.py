"""URL normalisation and registrable domains: fixed cases and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.provisional import urls

from modelsieve.hashlists.errors import InvalidEntryError
from modelsieve.hashlists.urls import (
    domain_keys,
    listed_domain,
    normalise_url,
    registrable_domain,
    url_key,
    url_prefix_keys,
)


_URL_PIECES = st.sampled_from([*"aZ09.-_%/\\:@?#[]\t\n ~ß☃\u00ad\u200b。ｎ", "%2e", "%2E", "%41", "0x", "..", "//", "xn--", "http://"])


@pytest.mark.parametrize(
    "given_url, normalised",
    [
        ("HTTP://ExAmple.COM:80/a/../b/./c?x=1#frag", "http://example.com/b/c?x=1"),
        ("https://user:pw@Bücher.example:443", "https://xn--bcher-kva.example/"),
        ("example.com/path", "http://example.com/path"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("http://a.example./%7euser", "http://a.example/~user"),
        # spellings a browser (the WHATWG URL standard) takes to the same resource get one form
        ("http://127.1/x", "http://127.0.0.1/x"),
        ("http://0x7f.0.0.1/", "http://127.0.0.1/"),
        ("http://3405803781/app", "http://203.0.113.5/app"),
        ("http://0313.0.113.5/", "http://203.0.113.5/"),
        ("http://nud\u00adify.example/", "http://nudify.example/"),  # a soft hyphen IDNA ignores
        ("http://nudify.example\\app\\x", "http://nudify.example/app/x"),
        ("http://nudi\tfy.example/a\nb", "http://nudify.example/ab"),
        ("http://nudify%2Eexample/", "http://nudify.example/"),
        ("http://ß☃.de/", "http://xn--zca031q.de/"),  # UTS #46 non-transitional, as browsers encode it
        ("http://nudify.example/a b", "http://nudify.example/a%20b"),
    ],
)
def test_normalised_forms(given_url: str, normalised: str) -> None:
    assert normalise_url(given_url) == normalised


@pytest.mark.parametrize(
    "bad",
    ["", "ftp://x.example/", "http://", "http://exa mple.com/", "http://a..b/", "javascript:alert(1)", "http://1.2.3.08/", "http://example.123/", "0.."],
)
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


@pytest.mark.parametrize(
    "value, domain",
    [("Undress.co.uk", "undress.co.uk"), ("www.undress.co.uk.", "undress.co.uk"), ("https://www.undress.co.uk/", "undress.co.uk"),
     ("sites.google.com", "sites.google.com"), ("www.sites.google.com", "www.sites.google.com"), ("my-app.vercel.app", "my-app.vercel.app"),
     ("203.0.113.5", "203.0.113.5"), ("http://undress.co.uk:8080/#top", "undress.co.uk")],
)
def test_a_domain_entry_lists_the_host_it_names_never_a_wider_one(value: str, domain: str) -> None:
    """`sites.google.com` lists Google Sites, not google.com; only `www.` before a registrable domain goes."""
    assert listed_domain(value) == domain


@pytest.mark.parametrize("page", ["t.me/somebot", "https://undress.co.uk/app", "undress.co.uk/?ref=1"])
def test_a_page_given_as_a_domain_entry_is_refused(page: str) -> None:
    """`t.me/somebot` as a domain entry would list all of t.me."""
    with pytest.raises(InvalidEntryError, match="not a page"):
        listed_domain(page)


@pytest.mark.parametrize(
    "url, keys",
    [("https://a.b.example.co.uk:8443/x", ["a.b.example.co.uk", "b.example.co.uk", "example.co.uk"]),
     ("http://my-app.vercel.app/", ["my-app.vercel.app"]), ("http://[::1]/", ["::1"]), ("http://intranet/", ["intranet"])],
)
def test_domain_keys_run_from_the_host_down_to_its_registrable_domain(url: str, keys: list[str]) -> None:
    assert domain_keys(normalise_url(url)) == keys


@settings(max_examples=300, deadline=None)
@given(st.one_of(urls(), st.lists(_URL_PIECES, max_size=30).map("".join)))
def test_a_listed_domain_covers_its_own_root_url(value: str) -> None:
    try:
        domain = listed_domain(value)
    except InvalidEntryError:
        return
    assert listed_domain(domain) == domain
    assert domain in domain_keys(normalise_url(value))


def test_prefix_keys_cover_parent_paths_at_segment_boundaries() -> None:
    assert url_prefix_keys("https://a.example/x/y?q=1") == [
        "a.example/x/y?q=1",
        "a.example/x/y",
        "a.example/x/y/",
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


@settings(max_examples=500, deadline=None)
@given(st.lists(_URL_PIECES, max_size=30).map("".join))
def test_tricky_spellings_normalise_idempotently_or_are_refused(text: str) -> None:
    """Dots, numbers, backslashes, percent-escapes and IDNA-ignored characters in every order."""
    try:
        normalised = normalise_url(text)
    except InvalidEntryError:
        return
    assert normalise_url(normalised) == normalised
    assert domain_keys(normalised)[-1] == registrable_domain(text)


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
    assert domain_keys(normalised)[-1] == registrable_domain(url)
