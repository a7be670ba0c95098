"""A griffe extension for the API reference (mkdocs.yml): the docstrings' Sphinx roles (:class:`RetryPolicy`,
:meth:`close`, ...) become links where they name a documented object, and code elsewhere (a builtin, a
private helper), so that ``mkdocs build --strict`` has no unresolved cross-reference."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|data|attr|exc|mod|obj):`~?([\w.]+)`")


def _public(package: griffe.Module) -> set[str]:
    """The canonical paths of the package's exports (``__all__``) and of their members."""
    paths: set[str] = set()

    def add(obj: griffe.Object | griffe.Alias) -> None:
        target = obj.final_target if obj.is_alias else obj
        if target.path in paths:
            return
        paths.add(target.path)
        if isinstance(target, griffe.Class):
            for member in target.members.values():
                if not member.name.startswith("_"):
                    add(member)

    for name in package.exports or ():
        if isinstance(name, str) and name in package.members:
            add(package.members[name])
    return paths


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        public = _public(pkg)
        for name in ("testing",):
            if name in pkg.members:
                public |= _public(pkg.members[name])  # type: ignore[arg-type]
        for obj in _all(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _ROLE.sub(lambda m, o=obj: _render(o, m.group(1), public), obj.docstring.value)


def _all(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _all(member)  # type: ignore[arg-type]


def _render(obj: griffe.Object, name: str, public: set[str]) -> str:
    scope: griffe.Object | None = obj if isinstance(obj, (griffe.Class, griffe.Module)) else obj.parent
    while scope is not None:
        try:
            path = scope.resolve(name)
        except griffe.NameResolutionError:
            scope = scope.parent
            continue
        try:
            target = scope.modules_collection.get_member(path)
        except (KeyError, griffe.AliasResolutionError):
            break  # outside the package (a builtin, another library): code, not a link
        canonical = target.final_target.path if target.is_alias else path
        if canonical in public:
            return f"[`{name}`][{canonical}]"
        break
    return f"`{name}`"
