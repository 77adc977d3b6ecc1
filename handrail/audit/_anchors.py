"""Signed checkpoints of the audit chain: Ed25519 keys, their ids, and what is signed.

An anchor says "row ``seq`` of the chain had ``hash``", signed with an Ed25519 key. The signed
bytes are ``b"handrail-audit-anchor:v1:" + f"{seq}:{hash}".encode()``; ``signed_at`` and
``key_id`` are stored beside the signature but not signed (the key is named by its id, and the
id is checked by the signature). Anyone holding the public key can check an anchor, and with it
every row up to ``seq``: rewriting any of them changes the hash at ``seq``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from handrail.errors import HandrailError

__all__ = [
    "ANCHOR_CONTEXT",
    "Anchor",
    "anchor_message",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign_head",
]

ANCHOR_CONTEXT = b"handrail-audit-anchor:v1:"
"""What the signed bytes start with, so an anchor's signature means nothing anywhere else."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Anchor:
    """A signed checkpoint: row ``seq`` of the chain had ``hash`` when key ``key_id`` signed it
    (one row of ``handrail_audit_anchors``)."""

    seq: int
    hash: str
    signed_at: str
    """When it was signed: ISO-8601, UTC (stored, not signed)."""
    key_id: str
    """The signing key's id (`key_id`): 16 hex characters."""
    signature: str
    """The Ed25519 signature of `anchor_message`, base64."""

    @property
    def head(self) -> str:
        """``SEQ:HASH``, as `AuditLog.head` gives it."""
        return f"{self.seq}:{self.hash}"

    def holds(self, public_key: Ed25519PublicKey) -> bool:
        """Whether the signature is ``public_key``'s over this ``seq`` and ``hash``."""
        try:
            signature = base64.b64decode(self.signature, validate=True)
            public_key.verify(signature, anchor_message(self.seq, self.hash))
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True


def anchor_message(seq: int, hash: str) -> bytes:
    """The bytes an anchor's signature covers."""
    return ANCHOR_CONTEXT + f"{seq}:{hash}".encode()


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """A key's id: the first 16 hex characters of the sha256 of its raw public key bytes."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_head(
    private_key: Ed25519PrivateKey, seq: int, hash: str, *, now: datetime | None = None
) -> Anchor:
    """The anchor of row ``seq`` with ``hash``, signed with ``private_key`` (nothing stored)."""
    signature = private_key.sign(anchor_message(seq, hash))
    return Anchor(
        seq=seq,
        hash=hash,
        signed_at=(now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds"),
        key_id=key_id(private_key),
        signature=base64.b64encode(signature).decode(),
    )


def generate_keypair(path: str | Path) -> tuple[Path, Path]:
    """Make a new Ed25519 key: ``path`` gets the private key (PKCS8 PEM, unencrypted, mode
    0600) and ``path.pub`` the public one (SubjectPublicKeyInfo PEM). Refuses, writing nothing,
    when either file exists. Returns both paths."""
    private_path = Path(path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for taken in (private_path, public_path):
        if taken.exists():
            raise HandrailError(f"{taken} exists: a key is never overwritten")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink()
        raise
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a file that must not exist yet, created with ``mode``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise HandrailError(f"{path} exists: a key is never overwritten") from None
    except OSError as exc:
        raise HandrailError(f"{path}: cannot write the key: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file at ``path`` (unencrypted, as `generate_keypair`
    writes it)."""
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise HandrailError(
            f"{path}: the private key is encrypted; give an unencrypted one"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise HandrailError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise HandrailError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file at ``path`` (SubjectPublicKeyInfo)."""
    data = _read(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        hint = " (a private key: give its .pub file)" if b"PRIVATE KEY" in data else ""
        raise HandrailError(f"{path}: not a PEM public key{hint}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise HandrailError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise HandrailError(f"{path}: cannot read the key: {exc.strerror}") from None
