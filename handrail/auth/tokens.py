"""`JwtAuthenticator`: who a signed token (JWT) says its bearer is.

HS256 with a shared secret is for development; production uses RS256/ES256/EdDSA with public keys
from a JWKS file. Every failure is an `IdentityError` whose problem says why in one line and never
repeats the token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt

from handrail.auth.directory import Directory
from handrail.auth.identity import Identity, canonical_id
from handrail.context import Actor
from handrail.errors import IdentityError

__all__ = ["JwtAuthenticator", "Token"]

_SYMMETRIC = {"HS256": 32, "HS384": 48, "HS512": 64}
"""HMAC algorithms and the shortest secret (in bytes) each accepts: its hash's length."""
_ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_MAX_TOKEN = 16_384


@dataclass(frozen=True, slots=True)
class Token:
    """A signed token (JWT) an approver presents instead of an id: the approver is whoever it
    proves (`JwtAuthenticator`). Its text never shows in a repr."""

    jwt: str
    """The token's compact text (``header.payload.signature``)."""

    def __repr__(self) -> str:
        return "Token(<hidden>)"


class JwtAuthenticator:
    """Verifies signed tokens (JWT): HS256 with a shared secret for development; RS256/ES256 (and
    EdDSA) with keys from a JWKS file for production.

    Checks the signature, ``exp`` (always required), ``nbf``/``iat`` if present, and ``iss``/
    ``aud`` when configured (a token naming an audience is refused when none is configured). The
    person is the ``sub`` claim (or ``subject_claim``), canonicalised; roles come from the
    directory when one is given (the subject must then be in it), else from ``roles_claim`` (a
    list of strings; a missing claim means no roles; a dotted name such as
    ``realm_access.roles`` reads a nested claim).
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        jwks_file: str | Path | None = None,
        algorithms: Sequence[str] | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        roles_claim: str = "roles",
        subject_claim: str = "sub",
        directory: Directory | None = None,
        leeway: timedelta = timedelta(seconds=30),
    ) -> None:
        if (secret is None) == (jwks_file is None):
            raise IdentityError("pass exactly one of secret= (HS256) or jwks_file= (RS256, ES256)")
        chosen = list(algorithms) if algorithms is not None else None
        if chosen is None:
            chosen = ["HS256"] if secret is not None else ["RS256", "ES256", "EdDSA"]
        if isinstance(algorithms, str) or not chosen:
            raise IdentityError("algorithms must be a non-empty list of algorithm names")
        for name in chosen:
            if str(name).lower() == "none":
                raise IdentityError("the 'none' algorithm (unsigned tokens) is never accepted")
            if name not in _SYMMETRIC and name not in _ASYMMETRIC:
                raise IdentityError(f"unknown or unsupported JWT algorithm {name!r}")
            if secret is not None and name in _ASYMMETRIC:
                raise IdentityError(
                    f"{name} needs public keys (jwks_file=), not a shared secret: "
                    "mixing them allows algorithm confusion"
                )
            if jwks_file is not None and name in _SYMMETRIC:
                raise IdentityError(
                    f"{name} uses a shared secret, not keys from a JWKS file: "
                    "mixing them allows algorithm confusion"
                )
        self.algorithms: tuple[str, ...] = tuple(dict.fromkeys(chosen))
        """The algorithms a token may be signed with."""
        self.issuer = issuer
        """The required ``iss``, if any."""
        self.audience = audience
        """The required ``aud``, if any."""
        self.roles_claim = roles_claim
        """The claim holding the roles (used when there is no directory)."""
        self.subject_claim = subject_claim
        """The claim naming the person."""
        self.directory = directory
        """Where roles come from, when given; the token's subject must be in it."""
        self.leeway = leeway
        """Clock skew tolerated on ``exp``, ``nbf`` and ``iat``."""
        self._secret = secret
        self._keys: list[jwt.PyJWK] = []
        self._source = "secret" if jwks_file is None else str(jwks_file)
        if secret is not None:
            length = len(secret.encode() if isinstance(secret, str) else secret)
            shortest = max(_SYMMETRIC[name] for name in self.algorithms)
            if length < shortest:
                raise IdentityError(
                    f"the shared secret is {length} bytes; {'/'.join(self.algorithms)} "
                    f"needs at least {shortest}"
                )
        else:
            self._keys = _load_jwks(str(jwks_file), self.algorithms)

    def __repr__(self) -> str:
        return (
            f"JwtAuthenticator(keys={self._source!r}, algorithms={list(self.algorithms)!r}, "
            f"issuer={self.issuer!r}, audience={self.audience!r})"
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, directory: Directory | None = None
    ) -> JwtAuthenticator | None:
        """The authenticator the environment configures, or None when it configures none.

        Reads ``HANDRAIL_JWT_SECRET``, ``HANDRAIL_JWKS_FILE``, ``HANDRAIL_JWT_ISSUER``,
        ``HANDRAIL_JWT_AUDIENCE``, ``HANDRAIL_JWT_ROLES_CLAIM`` and ``HANDRAIL_JWT_ALGORITHMS``
        (comma separated). Empty values count as unset.
        """
        env = os.environ if environ is None else environ
        secret = env.get("HANDRAIL_JWT_SECRET") or None
        jwks_file = env.get("HANDRAIL_JWKS_FILE") or None
        if secret is None and jwks_file is None:
            return None
        names = [a.strip() for a in env.get("HANDRAIL_JWT_ALGORITHMS", "").split(",") if a.strip()]
        return cls(
            secret=secret,
            jwks_file=jwks_file,
            algorithms=names or None,
            issuer=env.get("HANDRAIL_JWT_ISSUER") or None,
            audience=env.get("HANDRAIL_JWT_AUDIENCE") or None,
            roles_claim=env.get("HANDRAIL_JWT_ROLES_CLAIM") or "roles",
            directory=directory,
        )

    def authenticate(self, token: str) -> Identity:
        """The identity a token proves, or `IdentityError` saying in one line why it proves none
        (expired, bad signature, wrong audience or issuer, no key for its ``kid``, not a JWT, no
        subject, roles claim not a list of strings, ...). The token never appears in the error."""
        if not isinstance(token, str) or not token.strip():
            raise IdentityError("the token is empty or not a string")
        token = token.strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        if len(token) > _MAX_TOKEN:
            raise IdentityError(f"the token is longer than {_MAX_TOKEN} characters")
        payload = self._verify(token)
        raw_subject = payload.get(self.subject_claim)
        if raw_subject is None or raw_subject == "":
            raise IdentityError(f"the token has no {self.subject_claim!r} claim (the person)")
        if not isinstance(raw_subject, str):
            raise IdentityError(f"the token's {self.subject_claim!r} claim is not a string")
        try:
            person = canonical_id(raw_subject)
        except IdentityError as exc:
            raise IdentityError(
                f"the token's subject is not a usable id: {exc.problem}", identity=raw_subject
            ) from exc
        if self.directory is not None:
            roles = self.directory.identify(raw_subject).actor.roles
        else:
            roles = self._claimed_roles(payload, raw_subject)
        issuer = payload.get("iss")
        return Identity(
            actor=Actor(id=person, roles=roles),
            via="token",
            issuer=issuer if isinstance(issuer, str) else None,
            subject=raw_subject,
        )

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise IdentityError(f"not a JWT: {_scrub(exc, token)}") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            shown = repr(alg)[:40] if isinstance(alg, str) else "missing"
            raise IdentityError(
                f"the token's algorithm {shown} is not accepted "
                f"(accepted: {', '.join(self.algorithms)})"
            )
        key: jwt.PyJWK | str | bytes = self._secret if self._secret is not None else b""
        if self._keys:
            key = self._key_for(header.get("kid"))
        options: dict[str, Any] = {
            "require": [
                "exp",
                *(["iss"] if self.issuer else []),
                *(["aud"] if self.audience else []),
            ],
            "enforce_minimum_key_length": True,
        }
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=list(self.algorithms),
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.PyJWTError as exc:
            raise IdentityError(self._why(exc, token)) from None
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"invalid token: {type(exc).__name__}") from None
        return payload

    def _key_for(self, kid: object) -> jwt.PyJWK:
        if kid is None:
            if len(self._keys) == 1:
                return self._keys[0]
            raise IdentityError(
                f"the token has no kid and the JWKS file {self._source} holds "
                f"{len(self._keys)} keys: cannot tell which one signed it"
            )
        for key in self._keys:
            if key.key_id == kid:
                return key
        shown = repr(kid)[:66] if isinstance(kid, str) else type(kid).__name__
        raise IdentityError(
            f"no key in the JWKS file {self._source} matches the token's kid {shown}"
        )

    def _why(self, exc: jwt.PyJWTError, token: str) -> str:
        if isinstance(exc, jwt.ExpiredSignatureError):
            return "the token has expired"
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return f"the token has no {exc.claim!r} claim, which is required"
        if isinstance(exc, jwt.InvalidAudienceError):
            if self.audience is None:
                return "wrong audience: the token names an audience (aud) and none is configured"
            return f"wrong audience: the token is not for {self.audience!r}"
        if isinstance(exc, jwt.InvalidIssuerError):
            return f"wrong issuer: the token is not from {self.issuer!r}"
        if isinstance(exc, jwt.InvalidSignatureError):
            return "bad signature: the token was not signed by a trusted key"
        if isinstance(exc, jwt.ImmatureSignatureError):
            return f"the token is not valid yet ({_scrub(exc, token)})"
        if isinstance(exc, jwt.InvalidAlgorithmError):
            return f"the token's algorithm is not accepted ({_scrub(exc, token)})"
        if isinstance(exc, jwt.InvalidKeyError):
            return f"the key cannot verify this token ({_scrub(exc, token)})"
        if isinstance(exc, jwt.DecodeError):
            return f"not a valid JWT ({_scrub(exc, token)})"
        return f"invalid token ({_scrub(exc, token)})"

    def _claimed_roles(self, payload: Mapping[str, Any], subject: str) -> tuple[str, ...]:
        value: Any = payload
        if self.roles_claim in payload:
            value = payload[self.roles_claim]
        else:
            for part in self.roles_claim.split("."):
                if not isinstance(value, Mapping) or part not in value:
                    return ()
                value = value[part]
        if not isinstance(value, list) or not all(isinstance(r, str) and r for r in value):
            raise IdentityError(
                f"the token's {self.roles_claim!r} claim is not a list of non-empty strings",
                identity=subject,
            )
        return tuple(dict.fromkeys(value))


def _scrub(exc: Exception, token: str) -> str:
    """The library's one-line message for ``exc``, unless it repeats any part of the token."""
    text = " ".join(str(exc).split())[:200]
    parts = [token, *(part for part in token.split(".") if len(part) >= 8)]
    if not text or any(part in text for part in parts):
        return type(exc).__name__
    return text


def _load_jwks(path: str, algorithms: Sequence[str]) -> list[jwt.PyJWK]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read the JWKS file: {exc.strerror}") from exc
    except ValueError as exc:
        raise IdentityError(f"{path}: the JWKS file is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise IdentityError(f'{path}: a JWKS file is a JSON object {{"keys": [...]}}')
    for entry in data["keys"]:
        if isinstance(entry, dict) and ("d" in entry or "k" in entry):
            kid = entry.get("kid")
            raise IdentityError(
                f"{path}: key {kid!r} holds private or secret key material; "
                "a JWKS file for verifying tokens holds public keys only"
            )
    try:
        keyset = jwt.PyJWKSet.from_dict(data)
    except jwt.PyJWTError as exc:
        raise IdentityError(f"{path}: no usable key in the JWKS file ({exc})") from exc
    keys = [
        key
        for key in keyset.keys
        if key.public_key_use in (None, "sig") and key.algorithm_name in algorithms
    ]
    if not keys:
        raise IdentityError(f"{path}: no signing key in the JWKS file for {', '.join(algorithms)}")
    kids = [key.key_id for key in keys if key.key_id is not None]
    duplicates = sorted({kid for kid in kids if kids.count(kid) > 1})
    if duplicates:
        raise IdentityError(f"{path}: several keys share the kid {duplicates[0]!r}")
    return keys
