"""`handrail.auth.server`, the LangGraph server's auth handler, called directly: its configuration
from the environment, the user it makes of a bearer token (and the 401s), what `Trust.server`
makes of that user inside a run, and the thread rules. ``tests/test_server.py`` runs it on
``langgraph dev``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import jwt
import pytest
from langgraph_sdk import Auth

import handrail.auth.server as server_auth
from handrail import Policy
from handrail.auth import JwtAuthenticator, Trust
from handrail.auth.server import ANONYMOUS, DECIDE, OWNER, ServerAuth, decider_roles
from handrail.errors import IdentityError
from handrail.tools.demo import POLICY_PATH

SECRET = "unit-test-secret-0123456789abcdef-0123"
T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _token(person: str, *roles: str, ttl: int = 600, secret: str = SECRET) -> str:
    now = int(time.time())
    claims = {"sub": person, "roles": list(roles), "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm="HS256")


def _handler(deciders: tuple[str, ...] = ("treasurer",)) -> ServerAuth:
    return ServerAuth(
        authenticator=JwtAuthenticator(secret=SECRET), decider_roles=frozenset(deciders)
    )


class _User(dict[str, Any]):
    """The server's user as handlers see it: a mapping with an ``identity`` attribute."""

    @property
    def identity(self) -> str:
        return str(self["identity"])


def _ctx(
    user: Mapping[str, Any],
    action: Literal["create", "read", "update", "delete", "search", "create_run"],
) -> Auth.types.AuthContext:
    return Auth.types.AuthContext(
        permissions=list(user.get("permissions", [])),
        user=_User(user),  # type: ignore[arg-type]
        resource="threads",
        action=action,
    )


def _user(handler: ServerAuth, person: str, *roles: str) -> dict[str, Any]:
    return _run(handler.authenticate(f"Bearer {_token(person, *roles)}"))


# -- configuration -------------------------------------------------------------------------------


def test_without_a_key_the_handler_refuses_to_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HANDRAIL_AUTH", "HANDRAIL_JWT_SECRET", "HANDRAIL_JWKS_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(IdentityError) as raised:
        ServerAuth.from_env({})
    assert "needs HANDRAIL_JWT_SECRET" in raised.value.problem
    assert "HANDRAIL_AUTH=off" in raised.value.problem
    with pytest.raises(IdentityError, match="needs HANDRAIL_JWT_SECRET"):
        server_auth.__getattr__("auth")  # what the server reads: `handrail.auth.server:auth`


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"HANDRAIL_AUTH": "of"}, "HANDRAIL_AUTH is 'of'"),
        ({"HANDRAIL_AUTH": "off", "HANDRAIL_JWT_SECRET": SECRET}, "HANDRAIL_JWT_SECRET is set"),
        (
            {"HANDRAIL_JWT_SECRET": SECRET, "HANDRAIL_JWKS_FILE": "keys.json"},
            "both HANDRAIL_JWT_SECRET and HANDRAIL_JWKS_FILE",
        ),
        ({"HANDRAIL_JWT_SECRET": "too-short"}, "needs at least 32"),
    ],
    ids=["a-typo", "off-with-a-key", "secret-and-jwks", "short-secret"],
)
def test_a_contradictory_or_weak_configuration_is_refused(
    env: dict[str, str], problem: str
) -> None:
    with pytest.raises(IdentityError) as raised:
        ServerAuth.from_env(env)
    assert problem in raised.value.problem


def test_the_environment_configures_the_key_the_directory_and_the_deciders(tmp_path: Path) -> None:
    people = tmp_path / "people.yaml"
    people.write_text("people:\n  Alice: [treasurer]\n  agent-123: [ai-agent]\n")
    handler = ServerAuth.from_env(
        {
            "HANDRAIL_JWT_SECRET": SECRET,
            "HANDRAIL_DIRECTORY": str(people),
            "HANDRAIL_DECIDER_ROLES": " treasurer, operator ,,",
        }
    )
    assert handler.decider_roles == {"treasurer", "operator"}
    # Roles come from the directory, not from the token's claim.
    user = _run(handler.authenticate(f"Bearer {_token('ALICE', 'admin')}"))
    assert (user["identity"], user["handrail_roles"]) == ("alice", ["treasurer"])
    with pytest.raises(Auth.exceptions.HTTPException) as raised:
        _run(handler.authenticate(f"Bearer {_token('mallory', 'treasurer')}"))
    assert raised.value.status_code == 401
    assert "not in the directory" in str(raised.value.detail)


def test_with_auth_off_every_request_is_an_unauthenticated_user_without_roles() -> None:
    handler = ServerAuth.from_env({"HANDRAIL_AUTH": "off"})
    assert handler.authenticator is None
    user = _run(handler.authenticate(None))
    assert user == ANONYMOUS and user is not ANONYMOUS
    assert "handrail_roles" not in user and user["is_authenticated"] is False
    installed = handler.install()
    assert installed._handlers == {} and installed._global_handlers == []  # nothing refused


def test_decider_roles_are_the_approvers_and_the_escalation_roles_of_the_policies() -> None:
    assert decider_roles(Policy.from_file(POLICY_PATH)) == ("operator", "treasurer")
    other = Policy.from_yaml(
        "rules:\n  - {id: r, tools: [x], effect: ask, approvers: [officer, treasurer]}\n"
        "escalate_to: [oncall]\n"
    )
    assert decider_roles(Policy.from_file(POLICY_PATH), other) == (
        "officer",
        "oncall",
        "operator",
        "treasurer",
    )


# -- authentication ------------------------------------------------------------------------------


def test_a_verified_token_makes_the_user_with_its_roles_and_the_decide_permission() -> None:
    handler = _handler()
    alice = _user(handler, "Alice", "treasurer")
    assert alice == {
        "identity": "alice",
        "display_name": "Alice",
        "is_authenticated": True,
        "permissions": [DECIDE],
        "handrail_roles": ["treasurer"],
    }
    agent = _user(handler, "agent-123", "ai-agent")
    assert (agent["permissions"], agent["handrail_roles"]) == ([], ["ai-agent"])


@pytest.mark.parametrize(
    ("authorization", "why"),
    [
        (None, "authentication required"),
        ("", "authentication required"),
        ("Bearer", "authentication required"),
        (f"Basic {_token('alice', 'treasurer')}", "authentication required"),
        ("Bearer not.a.jwt", "invalid token"),
        (f"Bearer {_token('alice', 'treasurer', secret='y' * 40)}", "bad signature"),
        (f"Bearer {_token('alice', 'treasurer', ttl=-600)}", "expired"),
    ],
    ids=["none", "empty", "no-token", "basic", "garbage", "another-key", "expired"],
)
def test_no_or_bad_credentials_are_401_and_the_token_is_not_repeated(
    authorization: str | None, why: str
) -> None:
    with pytest.raises(Auth.exceptions.HTTPException) as raised:
        _run(_handler().authenticate(authorization))
    assert raised.value.status_code == 401
    detail = str(raised.value.detail)
    assert why in detail
    token = (authorization or "").partition(" ")[2]
    for part in [token, *token.split(".")]:
        assert len(part) < 8 or part not in detail


# -- what the graph makes of the user --------------------------------------------------------------


class _ProxyUser:
    """A dict user as the server hands it to a run (``langgraph_api``'s ``ProxyUser`` over a
    ``DotDict``, which cannot be imported outside a configured server): the dict's keys as
    attributes, and ``is_authenticated`` true unless the dict says otherwise."""

    def __init__(self, user: Mapping[str, Any]) -> None:
        self._user = dict(user)

    @property
    def identity(self) -> str:
        return str(self._user["identity"])

    @property
    def is_authenticated(self) -> bool:
        return bool(self._user.get("is_authenticated", True))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._user[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        return {**self._user, "is_authenticated": self.is_authenticated}[key]


def _as_run_config(user: Mapping[str, Any]) -> dict[str, Any]:
    """A run's config as the server makes it (``configurable.langgraph_auth_user``)."""
    return {"configurable": {"langgraph_auth_user": _ProxyUser(user)}}


def test_inside_a_run_the_authenticated_user_is_the_actor_and_the_approver() -> None:
    user = _user(_handler(), "Alice", "treasurer")
    identity = Trust().server(_as_run_config(user))
    assert identity is not None
    assert (identity.actor.id, identity.actor.roles, identity.via) == (
        "alice",
        ("treasurer",),
        "server",
    )


def test_with_auth_off_the_run_falls_back_to_its_context() -> None:
    user = _run(ServerAuth.from_env({"HANDRAIL_AUTH": "off"}).authenticate(None))
    assert Trust().server(_as_run_config(user)) is None  # so the context's actor, as claimed


def test_a_user_marked_unauthenticated_is_not_taken_as_the_actor() -> None:
    studio = {"identity": "langgraph-studio-user", "is_authenticated": False, "permissions": []}
    assert Trust().server(_as_run_config(studio)) is None


# -- threads -------------------------------------------------------------------------------------


def test_a_new_thread_belongs_to_its_creator_whatever_the_client_says() -> None:
    handler = _handler()
    agent = _user(handler, "agent-123", "ai-agent")
    metadata = {OWNER: "alice", "topic": "pay"}
    value: Auth.types.ThreadsCreate = {"metadata": metadata}
    assert _run(handler.create_thread(_ctx(agent, "create"), value)) == {OWNER: "agent-123"}
    assert metadata == {OWNER: "agent-123", "topic": "pay"}  # in place: the server's own dict


def test_owners_read_and_search_their_threads_and_deciders_every_thread() -> None:
    handler = _handler()
    agent, alice = _user(handler, "agent-123", "ai-agent"), _user(handler, "alice", "treasurer")
    bob = _user(handler, "bob", "teller")
    assert _run(handler.read_thread(_ctx(agent, "read"), {})) == {OWNER: "agent-123"}
    assert _run(handler.read_thread(_ctx(bob, "read"), {})) == {OWNER: "bob"}
    assert _run(handler.read_thread(_ctx(alice, "read"), {})) is None
    assert _run(handler.search_threads(_ctx(bob, "search"), {})) == {OWNER: "bob"}
    assert _run(handler.search_threads(_ctx(alice, "search"), {})) is None


def _run_value(**kwargs: Any) -> Auth.types.RunsCreate:
    value: Auth.types.RunsCreate = {
        "thread_id": "t-1",  # type: ignore[typeddict-item]
        "metadata": {},
        "multitask_strategy": kwargs.pop("multitask_strategy", "enqueue"),
        "kwargs": {"input": None, "command": None, "context": None, **kwargs},
    }
    return value


@pytest.mark.parametrize(
    ("kwargs", "anywhere"),
    [
        ({"command": {"resume": {"decisions": [{"type": "approve"}]}}}, True),
        ({"input": {"messages": []}}, False),
        ({"command": {"resume": {}, "update": {"calls": {}}}}, False),
        ({"command": {"resume": {}, "goto": "execute"}}, False),
        ({"command": {"resume": {}}, "multitask_strategy": "rollback"}, False),
    ],
    ids=["a-resume", "new-input", "resume-with-update", "resume-with-goto", "rollback"],
)
def test_a_decider_only_resumes_threads_it_does_not_own(
    kwargs: dict[str, Any], anywhere: bool
) -> None:
    handler = _handler()
    alice = _user(handler, "alice", "treasurer")
    bob = _user(handler, "bob", "teller")
    value = _run_value(**kwargs)
    assert _run(handler.create_run(_ctx(alice, "create_run"), value)) == (
        None if anywhere else {OWNER: "alice"}
    )
    assert _run(handler.create_run(_ctx(bob, "create_run"), _run_value(**kwargs))) == {OWNER: "bob"}


def test_a_runs_context_names_the_authenticated_user_whatever_the_client_sent() -> None:
    handler = _handler()
    agent = _user(handler, "agent-123", "ai-agent")
    value = _run_value(input={"messages": []})
    value["kwargs"]["context"] = {"actor": {"id": "alice", "roles": ["treasurer"]}, "x": 1}
    _run(handler.create_run(_ctx(agent, "create_run"), value))
    assert value["kwargs"]["context"] == {
        "actor": {"id": "agent-123", "roles": ["ai-agent"]},
        "x": 1,
    }
    assert value["metadata"] == {OWNER: "agent-123"}
    bare = _run_value(input={"messages": []})
    _run(handler.create_run(_ctx(agent, "create_run"), bare))
    assert bare["kwargs"]["context"] == {"actor": {"id": "agent-123", "roles": ["ai-agent"]}}


def test_only_the_owner_changes_a_thread_and_never_its_owner() -> None:
    handler = _handler()
    alice = _user(handler, "alice", "treasurer")
    assert _run(handler.change_thread(_ctx(alice, "update"), {"metadata": {"x": 1}})) == {
        OWNER: "alice"
    }  # a decider too: only its own
    assert _run(handler.change_thread(_ctx(alice, "delete"), {})) == {OWNER: "alice"}
    with pytest.raises(Auth.exceptions.HTTPException) as raised:
        _run(handler.change_thread(_ctx(alice, "update"), {"metadata": {OWNER: "bob"}}))
    assert raised.value.status_code == 403


def test_the_installed_handler_covers_every_thread_action_and_refuses_the_rest() -> None:
    installed = _handler().install()
    actions = ("create", "read", "search", "create_run", "update", "delete")
    assert {("threads", a) for a in actions} <= set(installed._handlers)
    assert {("assistants", "read"), ("assistants", "search")} <= set(installed._handlers)
    assert len(installed._global_handlers) == 1
    refuse = installed._global_handlers[0]
    bob = _user(_handler(), "bob", "teller")
    assert _run(refuse(ctx=_ctx(bob, "create"), value={})) is False
