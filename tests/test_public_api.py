"""
What is public, said in three places that must agree: the ``__all__`` of
the public modules, the documentation (``docs/api.md`` names every public
name, and some page documents it with a directive), and the changelog
(every public name its *Added* entries claim exists).
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import importlib
import inspect
import re

from pathlib import Path
from types import ModuleType

import pytest

import prebuilds


DOCS = Path(__file__).parent.parent / "docs"
CHANGELOG = Path(__file__).parent.parent / "CHANGELOG.md"

#: The modules whose ``__all__`` is the public API (CHANGELOG's preamble).
PUBLIC_MODULES = [
    "prebuilds",
    "prebuilds.interfaces",
    "prebuilds.exceptions",
    "prebuilds.stores",
    "prebuilds.testing",
    "prebuilds.metrics",
]


def public_names() -> list[str]:
    """Every public name, as ``module.name``."""
    names: list[str] = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names.extend(f"{module_name}.{name}" for name in module.__all__)
    return names


DIRECTIVE = re.compile(
    r"^\.\. (?P<kind>automodule|module|(?:auto)?(?:class|function|data|exception))"
    r"::\s+(?P<target>[\w.]+)",
    re.MULTILINE,
)
ROLE = re.compile(r"\{(?:class|func|data|exc|mod|meth|attr)\}`~?(?P<target>[\w.]+)`")


def documented() -> set[str]:
    """
    What the docs' directives document: ``.. autoclass:: prebuilds.X`` and
    friends, ``.. data:: X`` under ``.. module:: prebuilds``, and every name
    of a module given to ``.. automodule::`` with ``:members:``.
    """
    found: set[str] = set()
    for page in sorted(DOCS.rglob("*.md")):
        if "_build" in page.parts:
            continue
        text = page.read_text(encoding="utf-8")
        current = ""
        for match in DIRECTIVE.finditer(text):
            kind, target = match["kind"], match["target"]
            if kind == "module":
                current = target
            elif kind == "automodule":
                end = text.find("```", match.end())
                if ":members:" in text[match.end() : end]:
                    module = importlib.import_module(target)
                    found.update(f"{target}.{n}" for n in module.__all__)
            elif "." in target:
                found.add(target)
            else:
                found.add(f"{current}.{target}")
    return found


def named_in_api_page() -> set[str]:
    """What ``docs/api.md`` names, by a directive or a cross-reference."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    names = {m["target"] for m in ROLE.finditer(text)}
    names |= {m["target"] for m in DIRECTIVE.finditer(text) if "." in m["target"]}
    names |= {
        f"prebuilds.{m['target']}"
        for m in DIRECTIVE.finditer(text)
        if "." not in m["target"] and m["kind"] == "data"
    }
    for match in DIRECTIVE.finditer(text):
        if match["kind"] == "automodule":
            module = importlib.import_module(match["target"])
            names |= {f"{match['target']}.{n}" for n in module.__all__}
    return names


def canonical(dotted: str) -> str:
    """
    A re-exported name by the module that defines it publicly:
    ``prebuilds.Store`` is ``prebuilds.interfaces.Store``, and
    ``prebuilds.StoreError`` is ``prebuilds.exceptions.StoreError``.
    """
    module_name, _, name = dotted.rpartition(".")
    if not module_name.startswith("prebuilds"):
        return dotted
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return dotted
    home = getattr(obj, "__module__", module_name)
    if home in PUBLIC_MODULES and (inspect.isclass(obj) or inspect.isfunction(obj)):
        return f"{home}.{name}"
    return dotted


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_is_sorted_unique_and_resolves(module_name: str) -> None:
    """Each public module's ``__all__`` is sorted, without repeats, and resolves."""
    module = importlib.import_module(module_name)
    names = list(module.__all__)

    def key(name: str) -> tuple[int, str]:
        if name.isupper():
            return (0, name)
        return (1 if name[0].isupper() else 2, name)

    assert sorted(set(names), key=key) == names
    assert [] == [n for n in names if not hasattr(module, n)]


def test_every_error_is_in_the_exceptions_all() -> None:
    """Every error class of ``prebuilds.exceptions`` is public, and re-exported."""
    from prebuilds import exceptions

    errors = sorted(
        name
        for name, obj in vars(exceptions).items()
        if inspect.isclass(obj) and issubclass(obj, exceptions.PrebuildsError)
    )

    assert errors == exceptions.__all__
    assert [] == [name for name in errors if name not in prebuilds.__all__]


def test_every_public_name_is_documented() -> None:
    """Some page documents each public name with a directive (autodoc, data)."""
    docs = {canonical(name) for name in documented()}

    assert [] == [n for n in public_names() if canonical(n) not in docs]


def test_every_public_name_is_named_in_the_api_page() -> None:
    """``docs/api.md`` names each public name, or the page that documents it."""
    api = {canonical(name) for name in named_in_api_page()}

    assert [] == [n for n in public_names() if canonical(n) not in api]


def unreleased_section(heading: str) -> str:
    """The text of ``### <heading>`` under ``## [Unreleased]``."""
    text = CHANGELOG.read_text(encoding="utf-8")
    unreleased = text.split("## [Unreleased]", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### (\w+)\s*$", unreleased, flags=re.MULTILINE)
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    return sections.get(heading, "")


def resolve(dotted: str) -> tuple[ModuleType, list[str]]:
    """The longest importable module prefix of *dotted*, and the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        return module, parts[cut:]
    msg = f"no module in {dotted!r}"
    raise ImportError(msg)


CLAIMED = sorted(
    set(re.findall(r"`(prebuilds(?:\.\w+)+)`", unreleased_section("Added")))
)


def test_the_changelog_names_public_things() -> None:
    """The Added section names some public names (so the test below tests something)."""
    assert len(CLAIMED) > 20


@pytest.mark.parametrize("dotted", CLAIMED)
def test_what_the_changelog_adds_exists_and_is_public(dotted: str) -> None:
    """
    A name the changelog's Added entries give as ``prebuilds.X.Y`` exists,
    and its first part after the module is public (in that module's
    ``__all__``), or is a public module.
    """
    module, rest = resolve(dotted)
    obj: object = module
    for part in rest:
        obj = getattr(obj, part)

    if rest:
        assert rest[0] in module.__all__, (
            f"{rest[0]} is not in {module.__name__}.__all__"
        )
    else:
        assert module.__name__ in [*PUBLIC_MODULES, "prebuilds.testing.strategies"]
