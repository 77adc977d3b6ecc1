"""handrail.auth: ids compared as people, the directory, verified tokens, and `Trust`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from handrail.auth import (
    Directory,
    Identity,
    JwtAuthenticator,
    Trust,
    canonical_id,
    same_person,
)
from handrail.context import Actor
from handrail.errors import IdentityError

SECRET = "a-development-secret-of-at-least-32-bytes"
FULLWIDTH_AGENT = "\uff41\uff47\uff45\uff4e\uff54-123"  # fullwidth "agent"
CYRILLIC_AGENT = "\u0430gent-123"  # Cyrillic a, then Latin "gent"
GREEK_NAME = "\u03a3\u03c9\u03ba\u03c1\u03ac\u03c4\u03b7\u03c2"  # Sokratis, final sigma
RUSSIAN_NAME = "\u0430\u043b\u0435\u043a\u0441\u0435\u0439"  # aleksei, all Cyrillic


# --- canonical ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [FULLWIDTH_AGENT, "AGENT-123", "  Agent-123\n", "agent-123"])
def test_case_and_width_variants_are_one_person(raw: str) -> None:
    assert canonical_id(raw) == "agent-123"
    assert same_person(raw, "agent-123")


def test_case_folding_goes_beyond_lower() -> None:
    assert canonical_id("Stra\N{LATIN SMALL LETTER SHARP S}e") == "strasse"
    assert not same_person("alice", "alicia")


@pytest.mark.parametrize(
    ("raw", "code", "why"),
    [
        ("agent-123\u200b", "U+200B", "format"),
        ("ag\u00adent", "U+00AD", "format"),
        ("\u202eagent", "U+202E", "bidirectional"),
        ("a\u200dgent", "U+200D", "format"),
        ("agent\t123", "U+0009", "whitespace"),
        ("agent 123", "U+0020", "whitespace"),
        ("agent\u3000123", "U+3000", "whitespace"),
        ("agent\x00", "U+0000", "control"),
        ("\x1bagent", "U+001B", "control"),
        ("agent\u2028x", "U+2028", "line separator"),
        ("agent\ufe0f", "U+FE0F", "default-ignorable"),
        ("agent\U000e0041", "U+E0041", "format"),
        ("agent\u2800", "U+2800", "default-ignorable"),
        ("agent\ue000", "U+E000", "private-use"),
        ("agent\u0378", "U+0378", "unassigned"),
    ],
)
def test_invisible_and_control_characters_are_refused(raw: str, code: str, why: str) -> None:
    with pytest.raises(IdentityError) as exc:
        canonical_id(raw)
    assert exc.value.identity == raw
    assert code in exc.value.problem
    assert why in exc.value.problem


@pytest.mark.parametrize("raw", ["", "   ", "\t\n"])
def test_empty_ids_are_refused(raw: str) -> None:
    with pytest.raises(IdentityError) as exc:
        canonical_id(raw)
    assert "empty" in exc.value.problem


def test_cyrillic_letter_in_a_latin_id_is_refused() -> None:
    with pytest.raises(IdentityError) as exc:
        canonical_id(CYRILLIC_AGENT)
    assert exc.value.identity == CYRILLIC_AGENT
    assert "U+0430" in exc.value.problem
    assert "Cyrillic" in exc.value.problem
    assert "Latin" in exc.value.problem


def test_greek_omicron_in_a_latin_id_is_refused() -> None:
    with pytest.raises(IdentityError) as exc:
        canonical_id("r\u03bfot")
    assert "U+03BF" in exc.value.problem


def test_same_person_refuses_a_look_alike() -> None:
    with pytest.raises(IdentityError) as exc:
        same_person("agent-123", CYRILLIC_AGENT)
    assert exc.value.identity == CYRILLIC_AGENT


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (GREEK_NAME, GREEK_NAME.lower().replace("\u03c2", "\u03c3")),
        ("山田太郎", "山田太郎"),
        ("やまだ", "やまだ"),
        ("田中エリカ", "田中エリカ"),
        ("김민준", "김민준"),
        (RUSSIAN_NAME, RUSSIAN_NAME),
        ("tanaka-山田", "tanaka-山田"),
        ("alice@example.com", "alice@example.com"),
    ],
)
def test_single_script_and_cjk_ids_are_accepted(raw: str, expected: str) -> None:
    assert canonical_id(raw) == expected


_ID_TEXT = st.text(
    alphabet=st.characters(categories=["L", "M", "N", "P", "S"]), min_size=1, max_size=24
)


@settings(max_examples=300, deadline=None)
@given(_ID_TEXT)
def test_canonical_id_is_idempotent_on_accepted_ids(raw: str) -> None:
    try:
        once = canonical_id(raw)
    except IdentityError:
        return
    assert canonical_id(once) == once


_ASCII_ID = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-",
    min_size=1,
    max_size=24,
)


@settings(max_examples=300, deadline=None)
@given(_ASCII_ID, st.data())
def test_case_and_width_variants_of_an_ascii_id_are_one_person(raw: str, data: Any) -> None:
    variant = "".join(
        data.draw(
            st.sampled_from([c, c.upper(), c.lower(), chr(ord(c) + 0xFEE0)]),
            label=f"variant of {c!r}",
        )
        for c in raw
    )
    assert canonical_id(variant) == canonical_id(raw) == raw.lower()


# --- identity -----------------------------------------------------------------------------------


def test_identity_describes_how_it_was_established() -> None:
    actor = Actor(id="alice")
    token = Identity(actor=actor, via="token", issuer="https://idp", subject="Alice")
    assert token.describe() == "token iss=https://idp sub=Alice"
    assert Identity(actor=actor, via="directory").describe() == "directory"
    assert Identity(actor=actor, via="claimed").describe() == "claimed"


# --- directory ----------------------------------------------------------------------------------


def test_from_mapping_canonicalises_ids() -> None:
    directory = Directory.from_mapping({"Alice": ["approver", "ops"], "bot-1": []})
    assert directory.roles_of("ALICE") == ("approver", "ops")
    assert directory.roles_of(" alice ") == ("approver", "ops")
    assert directory.roles_of("bot-1") == ()
    assert directory.roles_of("mallory") is None


def test_from_mapping_refuses_two_keys_for_one_person() -> None:
    with pytest.raises(IdentityError) as exc:
        Directory.from_mapping({"Alice": ["ops"], "ALICE": ["admin"]})
    assert "'Alice'" in exc.value.problem
    assert "'ALICE'" in exc.value.problem
    assert "same person" in exc.value.problem


def test_from_mapping_refuses_a_look_alike_key() -> None:
    with pytest.raises(IdentityError) as exc:
        Directory.from_mapping({CYRILLIC_AGENT: ["ops"]})
    assert exc.value.identity == CYRILLIC_AGENT
    assert "U+0430" in exc.value.problem


def test_from_mapping_refuses_a_string_of_roles() -> None:
    with pytest.raises(IdentityError) as exc:
        Directory.from_mapping({"alice": "approver"})
    assert "list of non-empty strings" in exc.value.problem


@pytest.mark.parametrize(
    "text",
    [
        "people:\n  Alice: [approver]\n  bob: {roles: [ops, approver]}\n",
        "Alice: [approver]\nbob:\n  roles: [ops, approver]\n",
    ],
)
def test_from_file_reads_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "people.yaml"
    path.write_text(text)
    directory = Directory.from_file(path)
    assert directory.roles_of("alice") == ("approver",)
    assert directory.roles_of("BOB") == ("ops", "approver")
    assert directory.name == str(path)


def test_from_file_reads_json(tmp_path: Path) -> None:
    path = tmp_path / "people.json"
    path.write_text(json.dumps({"people": {"carol": ["auditor"]}}))
    assert Directory.from_file(path).roles_of("Carol") == ("auditor",)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("people: [alice\n", "not valid YAML"),
        ("- alice\n- bob\n", "mapping of ids to roles"),
        ("alice: approver\n", "entry 'alice': roles must be a list"),
        ("alice: [approver, '']\n", "entry 'alice': roles must be a list"),
        ("alice: {role: [approver]}\n", "unexpected key(s) 'role'"),
        ("1001: [approver]\n", "quote it"),
        ("Alice: [a]\nalice: [b]\n", "same person"),
        ("people: {alice: [a]}\nversion: 1\n", "'version'"),
        ("agent\u200b: [a]\n", "U+200B"),
    ],
)
def test_a_broken_directory_file_names_the_path(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "people.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(IdentityError) as exc:
        Directory.from_file(path)
    assert str(path) in exc.value.problem
    assert fragment in exc.value.problem


def test_a_missing_directory_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(IdentityError) as exc:
        Directory.from_file(path)
    assert str(path) in exc.value.problem


def test_identify_gives_the_directory_roles() -> None:
    directory = Directory.from_mapping({"alice": ["approver", "ops"]})
    identity = directory.identify("ALICE")
    assert identity.actor == Actor(id="alice", roles=("approver", "ops"))
    assert identity.via == "directory"
    assert directory.identify("alice", ["ops"]).actor.roles == ("approver", "ops")


def test_identify_refuses_an_unknown_id() -> None:
    directory = Directory.from_mapping({"alice": ["approver"]})
    with pytest.raises(IdentityError) as exc:
        directory.identify("Mallory")
    assert exc.value.identity == "Mallory"
    assert "not in the directory" in exc.value.problem


def test_identify_refuses_a_claimed_role_the_directory_does_not_give() -> None:
    directory = Directory.from_mapping({"alice": ["approver"]})
    with pytest.raises(IdentityError) as exc:
        directory.identify("alice", ["approver", "admin", "root"])
    assert "'admin', 'root'" in exc.value.problem
    assert "'approver'" not in exc.value.problem


def test_a_callable_source_is_asked_with_canonical_ids() -> None:
    asked: list[str] = []

    def source(person: str) -> Iterable[str] | None:
        asked.append(person)
        return {"agent-123": ["ops"]}.get(person)

    directory = Directory(source, name="hr")
    assert directory.identify(FULLWIDTH_AGENT).actor == Actor(id="agent-123", roles=("ops",))
    assert asked == ["agent-123"]
    with pytest.raises(IdentityError) as exc:
        directory.identify("Alice")
    assert "'hr'" in exc.value.problem
    assert asked == ["agent-123", "alice"]


def test_a_directory_source_object_is_used() -> None:
    class Staff:
        def roles(self, person: str) -> Iterable[str] | None:
            return ("approver",) if person == "dana" else None

    assert Directory(Staff()).identify("Dana").actor.roles == ("approver",)
    assert Directory(Staff()).roles_of("eve") is None


def test_a_source_answering_with_a_string_is_refused() -> None:
    directory = Directory(lambda person: "approver")
    with pytest.raises(IdentityError) as exc:
        directory.roles_of("alice")
    assert "str" in exc.value.problem
    assert exc.value.identity == "alice"


def test_a_source_error_propagates() -> None:
    def source(person: str) -> Iterable[str] | None:
        raise ConnectionError("ldap down")

    with pytest.raises(ConnectionError, match="ldap down"):
        Directory(source).identify("alice")


# --- tokens -------------------------------------------------------------------------------------


def _claims(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": "Alice",
        "iss": "https://idp.example",
        "aud": "handrail",
        "exp": now + timedelta(hours=1),
        "iat": now,
        "roles": ["approver"],
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def _hs_auth(**kwargs: Any) -> JwtAuthenticator:
    return JwtAuthenticator(
        secret=SECRET, issuer="https://idp.example", audience="handrail", **kwargs
    )


def test_hs256_token_is_verified() -> None:
    identity = _hs_auth().authenticate(jwt.encode(_claims(), SECRET, algorithm="HS256"))
    assert identity.actor == Actor(id="alice", roles=("approver",))
    assert identity.via == "token"
    assert identity.issuer == "https://idp.example"
    assert identity.subject == "Alice"
    assert identity.describe() == "token iss=https://idp.example sub=Alice"


def _hs_token(**overrides: Any) -> str:
    return jwt.encode(_claims(**overrides), SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        (_hs_token(exp=datetime.now(UTC) - timedelta(hours=1)), "expired"),
        (jwt.encode(_claims(), "another-secret-that-is-32-bytes-long!!", "HS256"), "bad signature"),
        (_hs_token(aud="someone-else"), "wrong audience"),
        (_hs_token(iss="https://evil.example"), "wrong issuer"),
        (_hs_token(exp=None), "'exp'"),
        (_hs_token(iss=None), "'iss'"),
        (_hs_token(sub=None), "'sub'"),
        (_hs_token(nbf=datetime.now(UTC) + timedelta(hours=1)), "not valid yet"),
        (_hs_token(roles="approver"), "not a list"),
        (_hs_token(roles=["approver", 7]), "not a list"),
        (_hs_token(sub="\u0430lice"), "U+0430"),
        (jwt.encode(_claims(), key="", algorithm="none"), "'none' is not accepted"),
        ("not-a-jwt", "not a JWT"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLWJ5dGVz", "bad signature"),
    ],
)
def test_a_bad_token_is_refused_without_echoing_it(token: str, fragment: str) -> None:
    with pytest.raises(IdentityError) as exc:
        _hs_auth().authenticate(token)
    assert fragment in exc.value.problem
    message = str(exc.value)
    assert token not in message
    assert all(part not in message for part in token.split(".") if len(part) > 4)
    assert "\n" not in exc.value.problem


def test_missing_roles_claim_means_no_roles() -> None:
    identity = _hs_auth().authenticate(_hs_token(roles=None))
    assert identity.actor.roles == ()


def test_a_nested_roles_claim_is_read() -> None:
    auth = _hs_auth(roles_claim="realm_access.roles")
    token = _hs_token(roles=None, realm_access={"roles": ["ops"]})
    assert auth.authenticate(token).actor.roles == ("ops",)


def test_roles_come_from_the_directory_when_one_is_given() -> None:
    directory = Directory.from_mapping({"alice": ["auditor"]})
    auth = _hs_auth(directory=directory)
    identity = auth.authenticate(_hs_token(roles=["admin"]))
    assert identity.actor.roles == ("auditor",)
    with pytest.raises(IdentityError) as exc:
        auth.authenticate(_hs_token(sub="mallory"))
    assert "not in the directory" in exc.value.problem


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "exactly one"),
        ({"secret": SECRET, "jwks_file": "keys.json"}, "exactly one"),
        ({"secret": "short-secret"}, "at least 32"),
        ({"secret": SECRET, "algorithms": ["none"]}, "'none'"),
        ({"secret": SECRET, "algorithms": ["RS256"]}, "algorithm confusion"),
        ({"secret": SECRET, "algorithms": ["HS999"]}, "unknown"),
        ({"secret": SECRET, "algorithms": []}, "non-empty"),
        ({"secret": SECRET + "-0123456789", "algorithms": ["HS512"]}, "at least 64"),
    ],
)
def test_unsafe_configurations_are_refused(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(IdentityError) as exc:
        JwtAuthenticator(**kwargs)
    assert fragment in exc.value.problem
    assert SECRET not in str(exc.value)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _jwk(public_key: Any, kid: str | None) -> dict[str, Any]:
    if isinstance(public_key, rsa.RSAPublicKey):
        jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public_key, as_dict=True)
    return jwk if kid is None else {**jwk, "kid": kid}


@pytest.fixture
def jwks_file(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> Path:
    path = tmp_path / "jwks.json"
    keys = [_jwk(rsa_key.public_key(), "rsa-1"), _jwk(ec_key.public_key(), "ec-1")]
    path.write_text(json.dumps({"keys": keys}))
    return path


def test_rs256_and_es256_tokens_are_verified_by_kid(
    jwks_file: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    auth = JwtAuthenticator(jwks_file=jwks_file, audience="handrail")
    rs = jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(_claims(sub="Bob"), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert auth.authenticate(rs).actor.id == "alice"
    assert auth.authenticate(es).actor.id == "bob"


@pytest.mark.parametrize(
    ("alg", "kid", "fragment"),
    [
        ("ES256", "rsa-1", "not accepted"),  # an EC signature presented for the RSA key
        ("RS256", "rsa-9", "no key in the JWKS file"),
        ("RS256", None, "no kid"),
    ],
)
def test_the_key_is_chosen_by_kid(
    jwks_file: Path,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    alg: str,
    kid: str | None,
    fragment: str,
) -> None:
    key: Any = rsa_key if alg == "RS256" else ec_key
    headers = {} if kid is None else {"kid": kid}
    token = jwt.encode(_claims(), key, algorithm=alg, headers=headers)
    with pytest.raises(IdentityError) as exc:
        JwtAuthenticator(jwks_file=jwks_file, audience="handrail").authenticate(token)
    assert fragment in exc.value.problem
    assert token not in str(exc.value)


def test_a_single_key_file_accepts_a_token_without_kid(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"keys": [_jwk(ec_key.public_key(), None)]}))
    token = jwt.encode(_claims(aud=None), ec_key, algorithm="ES256")
    assert JwtAuthenticator(jwks_file=path).authenticate(token).actor.id == "alice"


def test_a_token_signed_by_another_key_is_refused(jwks_file: Path) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(), stranger, algorithm="RS256", headers={"kid": "rsa-1"})
    with pytest.raises(IdentityError) as exc:
        JwtAuthenticator(jwks_file=jwks_file, audience="handrail").authenticate(token)
    assert "bad signature" in exc.value.problem


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_algorithm_confusion_is_refused(jwks_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    claims = _claims()
    claims["exp"] = int(claims["exp"].timestamp())
    claims["iat"] = int(claims["iat"].timestamp())
    body = _b64(json.dumps(claims).encode())
    signature = _b64(hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest())
    token = f"{header}.{body}.{signature}"
    with pytest.raises(IdentityError) as exc:
        JwtAuthenticator(jwks_file=jwks_file, audience="handrail").authenticate(token)
    assert "'HS256' is not accepted" in exc.value.problem
    with pytest.raises(IdentityError) as config:
        JwtAuthenticator(jwks_file=jwks_file, algorithms=["HS256"])
    assert "algorithm confusion" in config.value.problem


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('{"keys": "none"}', '{"keys": [...]}'),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}', "secret key material"),
    ],
)
def test_a_broken_jwks_file_is_refused(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(content)
    with pytest.raises(IdentityError) as exc:
        JwtAuthenticator(jwks_file=path)
    assert str(path) in exc.value.problem
    assert fragment in exc.value.problem


def test_from_env(jwks_file: Path) -> None:
    assert JwtAuthenticator.from_env({}) is None
    auth = JwtAuthenticator.from_env(
        {"HANDRAIL_JWT_SECRET": SECRET, "HANDRAIL_JWT_AUDIENCE": "handrail"}
    )
    assert auth is not None
    assert auth.authenticate(_hs_token(iss=None)).actor.id == "alice"
    from_file = JwtAuthenticator.from_env(
        {
            "HANDRAIL_JWKS_FILE": str(jwks_file),
            "HANDRAIL_JWT_ALGORITHMS": "RS256, ES256",
            "HANDRAIL_JWT_ISSUER": "https://idp.example",
            "HANDRAIL_JWT_ROLES_CLAIM": "groups",
        }
    )
    assert from_file is not None
    assert from_file.algorithms == ("RS256", "ES256")
    assert from_file.issuer == "https://idp.example"
    assert from_file.roles_claim == "groups"
    with pytest.raises(IdentityError) as exc:
        JwtAuthenticator.from_env(
            {"HANDRAIL_JWT_SECRET": SECRET, "HANDRAIL_JWKS_FILE": str(jwks_file)}
        )
    assert "exactly one" in exc.value.problem


def test_the_secret_is_not_in_the_repr() -> None:
    assert SECRET not in repr(_hs_auth())


# --- trust --------------------------------------------------------------------------------------

DIRECTORY = Directory.from_mapping({"alice": ["approver"], "bob": ["ops"]})


def test_approver_by_token() -> None:
    trust = Trust(authenticator=_hs_auth())
    identity = trust.approver({"token": _hs_token()})
    assert identity.via == "token"
    assert identity.actor == Actor(id="alice", roles=("approver",))
    same = trust.approver({"token": _hs_token(), "id": "ALICE", "roles": ["approver"]})
    assert same.actor.id == "alice"


def test_approver_token_with_another_id_is_refused() -> None:
    trust = Trust(authenticator=_hs_auth())
    with pytest.raises(IdentityError) as exc:
        trust.approver({"token": _hs_token(), "id": "bob"})
    assert exc.value.identity == "bob"
    assert "token's subject" in exc.value.problem


def test_approver_token_with_a_role_it_does_not_hold_is_refused() -> None:
    trust = Trust(authenticator=_hs_auth())
    with pytest.raises(IdentityError) as exc:
        trust.approver({"token": _hs_token(), "roles": ["admin"]})
    assert "'admin'" in exc.value.problem


def test_a_token_graph_refuses_a_bare_id() -> None:
    with pytest.raises(IdentityError) as exc:
        Trust(authenticator=_hs_auth(), directory=DIRECTORY).approver({"id": "alice"})
    assert "identifies approvers by token" in exc.value.problem


def test_a_token_without_an_authenticator_is_refused() -> None:
    with pytest.raises(IdentityError) as exc:
        Trust(directory=DIRECTORY).approver({"token": _hs_token()})
    assert "no token authenticator is configured" in exc.value.problem


def test_approver_by_directory() -> None:
    trust = Trust(directory=DIRECTORY)
    identity = trust.approver({"id": "Alice"})
    assert identity.via == "directory"
    assert identity.actor == Actor(id="alice", roles=("approver",))
    with pytest.raises(IdentityError) as exc:
        trust.approver({"id": "bob", "roles": ["approver"]})
    assert "'approver'" in exc.value.problem
    with pytest.raises(IdentityError) as unknown:
        trust.approver({"id": "mallory", "roles": ["approver"]})
    assert "not in the directory" in unknown.value.problem


def test_approver_claimed() -> None:
    identity = Trust().approver({"id": "ALICE", "roles": ["approver"]})
    assert identity.via == "claimed"
    assert identity.actor == Actor(id="alice", roles=("approver",))
    assert Trust().approver({"id": "bob"}).actor.roles == ()


@pytest.mark.parametrize(
    ("claim", "fragment"),
    [
        ({}, "no id"),
        ({"id": ""}, "no id"),
        ({"id": "alice", "name": "Alice", "email": "a@x"}, "'email', 'name'"),
        ({"id": 7}, "must be a string"),
        ({"id": "alice", "roles": "approver"}, "list of non-empty strings"),
        ({"id": CYRILLIC_AGENT}, "U+0430"),
    ],
)
def test_a_malformed_approver_is_refused(claim: dict[str, Any], fragment: str) -> None:
    with pytest.raises(IdentityError) as exc:
        Trust().approver(claim)
    assert fragment in exc.value.problem


def test_actor_with_a_directory() -> None:
    trust = Trust(directory=DIRECTORY)
    identity = trust.actor(Actor(id="ALICE"))
    assert identity.via == "directory"
    assert identity.actor == Actor(id="alice", roles=("approver",))
    with pytest.raises(IdentityError) as exc:
        trust.actor(Actor(id="alice", roles=("admin",)))
    assert "'admin'" in exc.value.problem
    with pytest.raises(IdentityError) as unknown:
        trust.actor(Actor(id="mallory"))
    assert unknown.value.identity == "mallory"


def test_actor_without_a_directory_is_claimed() -> None:
    identity = Trust().actor(Actor(id=FULLWIDTH_AGENT, roles=("ops",)))
    assert identity.via == "claimed"
    assert identity.actor == Actor(id="agent-123", roles=("ops",))
    with pytest.raises(IdentityError) as exc:
        Trust().actor(Actor(id="agent-123\u200b"))
    assert "U+200B" in exc.value.problem
