"""The `Directory`: the people and agents that exist, and the roles each holds.

A directory is a trusted source. Roles are read from it, never from a request: a caller may name the
roles it means to act with, and is refused if the directory does not give it every one of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import yaml

from handrail.auth.identity import Identity, canonical_id
from handrail.context import Actor
from handrail.errors import IdentityError

__all__ = ["Directory", "DirectorySource"]


@runtime_checkable
class DirectorySource(Protocol):
    """Where a `Directory` looks people up: an HR system, an LDAP query, a table."""

    def roles(self, person: str) -> Iterable[str] | None:
        """The roles of ``person`` (a canonical id), or None if it is not a known person."""
        ...


def _roles_list(value: object) -> tuple[str, ...] | None:
    """The roles in ``value`` as a tuple (duplicates dropped), or None if it is not a list of
    non-empty strings."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        return None
    roles = list(value)
    if not all(isinstance(role, str) and role for role in roles):
        return None
    return tuple(dict.fromkeys(roles))


class Directory:
    """The people and agents that exist and their roles (a trusted source: roles never come from
    a request).

    ``source`` is a `DirectorySource` or a callable ``person -> roles | None``; it is given
    canonical ids. Exceptions it raises propagate.
    """

    def __init__(
        self,
        source: DirectorySource | Callable[[str], Iterable[str] | None],
        *,
        name: str = "directory",
    ) -> None:
        if isinstance(source, DirectorySource):
            self._lookup: Callable[[str], Iterable[str] | None] = source.roles
        elif callable(source):
            self._lookup = source
        else:
            raise TypeError(
                f"a directory source is a callable or has a roles() method, "
                f"not {type(source).__name__}"
            )
        self.name = name
        """How errors and the audit name this directory (a file's path for `from_file`)."""
        self._held: frozenset[str] | None = None

    def __repr__(self) -> str:
        return f"Directory(name={self.name!r})"

    @classmethod
    def from_mapping(cls, people: Mapping[str, Iterable[str]]) -> Directory:
        """A directory of ``{id: [roles]}``. Ids are canonicalised: a refused id, or two ids that
        are the same person, raise `IdentityError`."""
        return cls._from_entries(people, name="directory", where="")

    @classmethod
    def from_file(cls, path: str | Path) -> Directory:
        """A directory read from a YAML (or JSON) file.

        The file is ``{"people": {id: roles}}`` or just ``{id: roles}``, where ``roles`` is a list
        of non-empty strings or ``{"roles": [...]}``. Errors name the file and the entry.
        """
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise IdentityError(f"{where}: cannot read the directory file: {exc}") from exc
        try:
            data = json.loads(text) if where.endswith(".json") else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            kind = "JSON" if where.endswith(".json") else "YAML"
            summary = " ".join(str(exc).split())
            raise IdentityError(f"{where}: not valid {kind}: {summary}") from exc
        if not isinstance(data, Mapping):
            raise IdentityError(
                f"{where}: a directory file is a mapping of ids to roles "
                f"(optionally under 'people'), not {type(data).__name__}"
            )
        if isinstance(data.get("people"), Mapping):
            extra = sorted(str(key) for key in data if key != "people")
            if extra:
                raise IdentityError(
                    f"{where}: unexpected top-level key(s) {', '.join(map(repr, extra))} "
                    "beside 'people'"
                )
            data = data["people"]
        entries: dict[str, Iterable[str]] = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise IdentityError(
                    f"{where}: entry {key!r} is a {type(key).__name__}, not a string: quote it"
                )
            entries[key] = _entry_roles(value, where=where, key=key)
        return cls._from_entries(entries, name=where, where=f"{where}: ")

    @classmethod
    def _from_entries(cls, people: Mapping[str, Any], *, name: str, where: str) -> Directory:
        table: dict[str, tuple[str, ...]] = {}
        given: dict[str, str] = {}
        for key, value in people.items():
            try:
                person = canonical_id(key)
            except IdentityError as exc:
                raise IdentityError(f"{where}entry {key!r}: {exc.problem}", identity=key) from exc
            if person in table:
                raise IdentityError(
                    f"{where}entries {given[person]!r} and {key!r} are the same person "
                    f"({person!r})",
                    identity=key,
                )
            roles = _roles_list(value)
            if roles is None:
                raise IdentityError(
                    f"{where}entry {key!r}: roles must be a list of non-empty strings",
                    identity=key,
                )
            table[person], given[person] = roles, key
        directory = cls(table.get, name=name)
        directory._held = frozenset(role for roles in table.values() for role in roles)
        return directory

    def roles_held(self) -> frozenset[str] | None:
        """Every role someone in the directory holds; None for a directory built on a source
        that cannot list its people (a callable, a `DirectorySource`)."""
        return self._held

    def roles_of(self, person: str) -> tuple[str, ...] | None:
        """The roles the directory gives ``person`` (a raw id, canonicalised here), or None if it
        is not in the directory. Raises `IdentityError` for a refused id, or a source that does
        not answer with a list of roles."""
        return self._roles(canonical_id(person), person)

    def _roles(self, canonical: str, person: str) -> tuple[str, ...] | None:
        found = self._lookup(canonical)
        if found is None:
            return None
        roles = _roles_list(found)
        if roles is None:
            raise IdentityError(
                f"the directory {self.name!r} answered with a {type(found).__name__}, "
                "not a list of non-empty role names",
                identity=person,
            )
        return roles

    def identify(self, person: str, claimed_roles: Iterable[str] | None = None) -> Identity:
        """The identity of ``person``, with the roles the directory gives it.

        Raises `IdentityError` when the person is not in the directory, or when ``claimed_roles``
        names a role the directory does not give it (such a role is never silently dropped).
        """
        canonical = canonical_id(person)
        roles = self._roles(canonical, person)
        if roles is None:
            raise IdentityError(
                f"{canonical!r} is not in the directory {self.name!r}", identity=person
            )
        if claimed_roles is not None:
            claimed = _roles_list(claimed_roles)
            if claimed is None:
                raise IdentityError(
                    "claimed roles must be a list of non-empty strings", identity=person
                )
            missing = [role for role in claimed if role not in roles]
            if missing:
                raise IdentityError(
                    f"the directory {self.name!r} does not give {canonical!r} the role(s) "
                    f"{', '.join(map(repr, missing))}",
                    identity=person,
                )
        return Identity(actor=Actor(id=canonical, roles=roles), via="directory")


def _entry_roles(value: object, *, where: str, key: str) -> Any:
    if isinstance(value, Mapping):
        extra = sorted(str(k) for k in value if k != "roles")
        if extra or "roles" not in value:
            problem = (
                f"unexpected key(s) {', '.join(map(repr, extra))}" if extra else "has no 'roles'"
            )
            raise IdentityError(f"{where}: entry {key!r}: {problem}", identity=key)
        return value["roles"]
    return value
