"""Sphinx configuration: MyST Markdown pages, autodoc, the Furo theme, copy buttons."""

from __future__ import annotations

import importlib
import re
import sys

from importlib.metadata import version as _version
from typing import Any

from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.pycode import ModuleAnalyzer


project = "prebuilds"
author = "The prebuilds developers"
copyright = "2026, The prebuilds developers"
release = _version("prebuilds")
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    # No sphinx.ext.intersphinx: the build machines reach PyPI only, and an
    # inventory that cannot be fetched is a warning, which -W makes fatal.
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"

# -- MyST ---------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- copy buttons ---------------------------------------------------------------
# The examples keep their prompts (``>>>`` blocks are doctests, run by the
# tests); the copy button takes the code without them, and without the
# output lines, so what is copied runs as pasted.
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True
copybutton_remove_prompts = True

# -- autodoc / napoleon ---------------------------------------------------------
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
# One parameter a line once a signature gets long (the data classes).
python_maximum_signature_line_length = 88
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# ``Attributes:`` sections become ``.. attribute::`` entries, which
# ``{attr}`Preset.ttl <prebuilds.Preset.ttl>``` can link to. (The slots of the
# attrs classes have no docstrings, so ``:members:`` does not repeat them.)
napoleon_use_ivar = False

# -- nitpicky -------------------------------------------------------------------
nitpicky = True
# Without intersphinx (see above) the standard library has no inventory: these
# types in public signatures cannot be resolved, and that is expected. (Bare
# names come from annotations that autodoc keeps as written.)
_STDLIB = [
    "UUID",
    "uuid.UUID",
    "datetime",
    "datetime.datetime",
    "timedelta",
    "datetime.timedelta",
    "AbstractContextManager",
    "contextlib.AbstractContextManager",
    "logging.Logger",
    "os.PathLike",
    "collections.abc.Callable",
    "collections.abc.Iterable",
    "collections.abc.Iterator",
    "collections.abc.Sequence",
]
nitpick_ignore = [
    *(("py:class", name) for name in _STDLIB),
    ("py:mod", "sqlite3"),
    # psycopg publishes no inventory we can reach either (see above): the
    # PostgresStore's signature and docstring name its pool and connection.
    ("py:class", "psycopg.Connection"),
    ("py:class", "psycopg_pool.ConnectionPool"),
    ("py:class", "psycopg_pool.pool.ConnectionPool"),
    # Nor does prometheus-client: PrometheusMetrics names its registry and
    # the metric families its collector yields.
    ("py:class", "prometheus_client.registry.CollectorRegistry"),
    ("py:class", "prometheus_client.metrics_core.Metric"),
]

# -- HTML -------------------------------------------------------------------------
html_theme = "furo"
html_title = f"prebuilds {release}"
html_static_path: list[str] = []


def _follow_imported(_app: Sphinx, modname: str, attribute: str) -> str | None:
    """
    Point viewcode at the private module that defines a re-exported name.

    ``prebuilds/__init__.py`` sets ``__module__ = "prebuilds"`` on what it
    re-exports, so that the docs name the public path; the source lives in
    ``prebuilds._*``.
    """
    if modname != "prebuilds":
        return None
    top = attribute.split(".", 1)[0]
    for name in sorted(sys.modules):
        if not name.startswith("prebuilds._"):
            continue
        module = importlib.import_module(name)
        if top not in vars(module):
            continue
        if top in ModuleAnalyzer.for_module(name).find_tags():
            return name
    return None


#: Where a bare name in a signature may live: an annotation that autodoc keeps
#: as written, such as ``GlobalSnapshot``, names an object documented as
#: ``prebuilds.GlobalSnapshot``.
_PUBLIC_MODULES = ("prebuilds", "prebuilds.interfaces", "prebuilds.exceptions")


def _resolve_bare_name(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: Any
) -> Any:
    """
    Resolve a bare ``Name`` that failed to ``prebuilds…Name``, if one exists.

    *contnode* and the result are docutils nodes (``Any``: docutils ships no
    type hints).
    """
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target or "." in target:
        return None
    domain = env.get_domain("py")
    for module in _PUBLIC_MODULES:
        found = domain.resolve_xref(
            env,
            node["refdoc"],
            app.builder,
            node["reftype"],
            f"{module}.{target}",
            node,
            contnode,
        )
        if found is not None:
            return found
    return None


_FUNCTION_REPR = re.compile(r"<function (\w+)(?: at 0x[0-9a-f]+)?>")


def _readable_defaults(
    _app: Sphinx,
    _what: str,
    _name: str,
    _obj: object,
    _options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """
    Show a function default by its name: ``name_factory=generate_name``.

    A default's repr such as ``<function generate_name>`` is not Python, and
    the signature parser then mangles the whole signature.
    """
    if signature is None or "<function " not in signature:
        return None
    return _FUNCTION_REPR.sub(r"\1", signature), return_annotation


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the viewcode, signature and cross-reference hooks."""
    app.connect("viewcode-follow-imported", _follow_imported)
    app.connect("autodoc-process-signature", _readable_defaults)
    app.connect("missing-reference", _resolve_bare_name)
    return {"parallel_read_safe": True}
