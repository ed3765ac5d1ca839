"""Ed25519 publisher keys: generation, files (private 0600, never printed), signing, verifying.

A public key travels as text: `ed25519:` + base64 of its 32 raw bytes. Its key id is the first 16
hex of the SHA-256 of those bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from modelsieve.fingerprint.errors import ModelsieveError

KEY_PREFIX = "ed25519:"
MAX_KEY_FILE = 64 * 1024  # an Ed25519 PEM private key is 119 bytes, a public key line 53


class KeyFileError(ModelsieveError):
    """A key file or public key text is missing, malformed or too widely readable."""


def public_key_text(key: Ed25519PublicKey) -> str:
    """The public key's text form: KEY_PREFIX and the base64 of its 32 raw bytes (parse_public_key reads it)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key from its text form; a clear error for anything else, which never quotes the
    text: it may be a private key given by mistake."""
    value = text.strip()
    if not value.startswith(KEY_PREFIX):
        hint = " (this is a PEM file, e.g. a private key: give the publisher's .pub file)" if value.startswith("-----BEGIN") else ""
        raise KeyFileError(f"not a public key: one looks like 'ed25519:BASE64...'{hint}")
    try:
        raw = base64.b64decode(value[len(KEY_PREFIX) :], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise KeyFileError("the public key is not 32 bytes of valid base64") from None


def key_id(key: Ed25519PublicKey) -> str:
    """A public key's short id: the first 16 hex digits of the SHA-256 of its raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_files(private_path: Path, public_path: Path) -> Ed25519PublicKey:
    """A new key pair: the private key as PKCS#8 PEM created with mode 0600, the public key as its
    text form; neither file is ever overwritten. Returns the public key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    if public_path.exists():  # e.g. a partner's key of that name: a pair is made whole or not at all
        raise KeyFileError(f"{public_path} exists already; a key is never overwritten")
    try:
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{private_path} exists already; a key is never overwritten") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {private_path}: {exc.strerror}") from None
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    try:
        with open(public_path, "x", encoding="utf-8") as public:
            public.write(public_key_text(key.public_key()) + "\n")
    except OSError as exc:  # no private key without its public half
        Path(private_path).unlink()
        raise KeyFileError(f"cannot create {public_path}: {exc.strerror}") from None
    return key.public_key()


def read_key_file(path: str | os.PathLike[str], what: str) -> tuple[bytes, int]:
    """A key file's bytes and mode: a regular file (a FIFO would be waited on for ever) of at most
    MAX_KEY_FILE bytes (a large file named by mistake is not read whole)."""
    try:
        with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK)) as handle:
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise KeyFileError(f"{path}: not a regular file, so not a {what}")
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{path} is over {MAX_KEY_FILE // 1024} KiB, far too large for a {what}")
    return data, status.st_mode


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """A private key file; refused when others may read it (as ssh does)."""
    data, mode = read_key_file(path, "private key")
    if data.lstrip().startswith(KEY_PREFIX.encode()):
        raise KeyFileError(f"{path} is a public key: signing needs the private NAME.key file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"the private key {path} is readable by others; chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    """The base64 Ed25519 signature of `data`."""
    return base64.b64encode(key.sign(data)).decode()


def verify(key: Ed25519PublicKey, signature: str, data: bytes) -> bool:
    """Whether `signature` (canonical base64: no other spelling of the same bytes) signs `data`."""
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, data)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return base64.b64encode(raw).decode() == signature
