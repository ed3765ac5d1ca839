"""URL normalisation and registrable domains, for URL and domain entries (nudify services).

Registrable domains come from the Public Suffix List snapshot bundled with `tldextract`, never
fetched at run time; private suffixes count (`app.vercel.app` is its own registrable domain, so
listing one hosted service never lists the whole hosting platform).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import TYPE_CHECKING

import ada_url
from yarl import URL

from modelsieve.hashlists.errors import InvalidEntryError

if TYPE_CHECKING:
    import tldextract

MAX_URL_LENGTH = 4096
_HOST_LABELS = re.compile(r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")


@functools.cache
def _extractor() -> tldextract.TLDExtract:
    # No suffix-list URLs and no cache directory: the bundled snapshot only, no network, no files.
    # Imported on first use: tldextract brings requests (~0.1 s), which most commands never need.
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)


def _parse(value: str) -> URL:
    """`value` parsed as browsers and search engines parse it (the WHATWG URL standard, by `ada_url`),
    so every spelling that reaches the same resource gets one form: backslashes, tabs and newlines,
    characters IDNA ignores (a soft hyphen), shorthand IPv4 (`127.1`, `0x7f.1`, `2130706433`) and
    percent-encoded host bytes included. Returned as a yarl URL for the components."""
    text = value.strip()
    if not text or len(text) > MAX_URL_LENGTH:
        raise InvalidEntryError(f"not a URL: {value[:80]!r}")
    if "://" not in text:
        text = "http://" + text
    try:
        url = URL(ada_url.URL(text).href)
        host = url.raw_host
    except (ValueError, UnicodeError):
        raise InvalidEntryError(f"not a URL: {value[:80]!r}") from None
    if url.scheme not in ("http", "https"):
        raise InvalidEntryError(f"only http and https URLs can be listed: {value[:80]!r}")
    if not host:
        raise InvalidEntryError(f"URL without a host: {value[:80]!r}")
    return url


@functools.lru_cache(maxsize=1 << 16)  # pure; a crawl asks again for every URL of a host (a failed IP parse is costly)
def normalise_host(host: str) -> str:
    """A parsed URL's host (IDNA-encoded by the parser) lower-cased, without the root's trailing dot,
    checked to be a host name; IP addresses canonical."""
    candidate = host.strip().lower().removesuffix(".")  # the root label only: `a..` is no host
    try:
        return str(ipaddress.ip_address(candidate.strip("[]")))
    except ValueError:
        pass
    if not _HOST_LABELS.fullmatch(candidate):
        raise InvalidEntryError(f"not a host name: {host[:80]!r}")
    return candidate


def normalise_url(value: str) -> str:
    """The canonical form of an http(s) URL.

    Scheme and host lower-cased, host IDNA-encoded, default port, user info and fragment dropped,
    dot segments resolved, percent-encoding made uniform, an empty path made "/". The query string
    is kept as given (its order can matter to the service). A missing scheme means http.
    """
    url = _parse(value)
    host = normalise_host(url.raw_host or "")
    netloc = f"[{host}]" if ":" in host else host
    if not url.is_default_port() and url.explicit_port is not None:
        netloc += f":{url.explicit_port}"
    path = url.raw_path or "/"
    query = f"?{url.raw_query_string}" if url.raw_query_string else ""
    return f"{url.scheme}://{netloc}{path}{query}"


def url_key(normalised_url: str) -> str:
    """The key URL entries match on: the normalised URL without its scheme (http and https agree)."""
    return normalised_url.split("://", 1)[1]


def url_prefix_keys(normalised_url: str) -> list[str]:
    """The keys a listed URL may have to cover this URL: itself, its path with a trailing slash,
    then each shorter path prefix.

    `https://a.example/x/y?q=1` → `a.example/x/y?q=1`, `a.example/x/y`, `a.example/x/y/`,
    `a.example/x/`, `a.example/x`, `a.example/`: a listed service URL covers every page below it,
    and a listed `…/app/` covers `…/app` (which servers answer with the same page or a redirect to it).
    """
    key = url_key(normalised_url)
    host_end = key.index("/")
    host, path = key[:host_end], key[host_end:].split("?", 1)[0]
    keys = [key, host + path] + ([] if path.endswith("/") else [host + path + "/"])
    segments = path.split("/")
    for end in range(len(segments) - 1, 0, -1):
        prefix = "/".join(segments[:end])
        keys += [host + prefix + "/", host + prefix] if prefix else [host + "/"]
    return list(dict.fromkeys(keys))


def registrable_domain(value: str) -> str:
    """The registrable domain (public suffix + one label) of a host or URL; an IP address as itself.

    A host under no known public suffix (an intranet name) is returned whole.
    """
    return _registrable_host(normalise_host(_parse(value).raw_host or ""))


def listed_domain(value: str) -> str:
    """The domain a domain entry for `value` lists (that host and every host below it): the host of
    a host name or a site's root URL, normalised; `www.` before a registrable domain is dropped.

    A page is refused (InvalidEntryError): `t.me/somebot` names one bot, and a domain entry for it
    would list all of t.me; the message says to give it as a URL entry.
    """
    url = _parse(value)
    host = normalise_host(url.raw_host or "")
    if url.raw_path not in ("", "/") or url.raw_query_string:
        raise InvalidEntryError(
            f"a domain entry lists a host and every host below it, not a page: {value[:80]!r} would list all of "
            f"{host}; give the page as a URL entry to list it and the pages below it"
        )
    domain = _registrable_host(host)
    return domain if host == f"www.{domain}" else host


def domain_keys(normalised_url: str) -> list[str]:
    """The domain entries that may cover a URL already normalised by `normalise_url`: its host, then
    each parent domain down to the registrable one (`a.b.example.com` → `a.b.example.com`,
    `b.example.com`, `example.com`); never a public suffix, so no entry lists a whole suffix's hosts."""
    host_port = url_key(normalised_url).split("/", 1)[0]
    host = host_port[1 : host_port.index("]")] if host_port.startswith("[") else host_port.split(":", 1)[0]
    domain = _registrable_host(host)
    keys = [host]
    while len(host) > len(domain) and "." in host:
        host = host.split(".", 1)[1]
        keys.append(host)
    return keys


def looks_like_ip_literal(host: str) -> bool:
    """Whether a URL host is taken for an IP address rather than a name (as aiohttp takes it: any
    host with a colon, or of digits and dots only, such as 2130706433 or 127.1); no registrable
    name looks like this."""
    return ":" in host or host.replace(".", "").isdigit()


@functools.lru_cache(maxsize=1 << 16)  # pure given the bundled list; a crawl asks again for every URL of a host
def _registrable_host(host: str) -> str:
    if looks_like_ip_literal(host):
        return host
    parts = _extractor()(host)
    if not parts.suffix or not parts.domain:
        return host
    return f"{parts.domain}.{parts.suffix}"
