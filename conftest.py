"""Run the documentation's examples as tests, through Sybil."""

from __future__ import annotations

from doctest import ELLIPSIS, NORMALIZE_WHITESPACE

from sybil import Sybil
from sybil.parsers.myst import (
    DocTestDirectiveParser,
    PythonCodeBlockParser,
    SkipParser,
)


_FLAGS = ELLIPSIS | NORMALIZE_WHITESPACE

# Every ```python block of the docs and the README runs: a block that starts
# with ``>>>`` is a doctest, any other is executed as is. The blocks of one
# page share a namespace, so a page reads (and runs) top to bottom.
pytest_collect_file = Sybil(
    parsers=[
        PythonCodeBlockParser(doctest_optionflags=_FLAGS),
        DocTestDirectiveParser(optionflags=_FLAGS),
        SkipParser(),
    ],
    patterns=["docs/*.md", "docs/*/*.md", "README.md"],
    excludes=["docs/_build/*"],
).pytest()
