# -*- test-case-name: tests.test_edge_matching -*-
"""
Regular expressions from the config, compiled once and safe to run per request.

Patterns come from operators but subjects (paths, query values) come from
clients, so a pattern must never take more than linear time on a hostile
subject.  With the C{google-re2} binding installed (it is a dependency) the
patterns run on RE2, which has no backtracking at all: C{(a+)+b} on a
million C{a}s is as quick as any other pattern, and backreferences and
look-arounds, which RE2 cannot run in linear time, are refused when the
config is loaded.

Without RE2 (a platform without a wheel) the fallback is Python's C{re}
with a guard: patterns with backreferences, look-arounds or a repeat inside
a repeat (the shapes that backtrack exponentially) are refused at config
time, and subjects longer than L{MAX_SUBJECT} never match.  A primitive
module: it imports nothing from txgateway.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

try:  # pragma: no branch - which engine is a property of the install
    import re2 as _re2
except ImportError:  # pragma: no cover - google-re2 is installed with txgateway
    _re2 = None

__all__ = ["ENGINE", "MAX_SUBJECT", "Pattern", "PatternError", "compilePattern"]

ENGINE = "re2" if _re2 is not None else "re"
# With the fallback engine, a subject longer than this never matches: the
# guard bounds the work a client can ask of one pattern.  (URIs are capped
# at server.max_uri_bytes, 8000 by default, anyway.)
MAX_SUBJECT = 8192


class PatternError(ValueError):
    """A pattern that does not compile, or that the guard refuses."""


class Pattern(Protocol):
    def fullmatch(self, subject: str) -> Any: ...

    def search(self, subject: str) -> Any: ...

    def sub(self, replacement: str, subject: str) -> str: ...


class _Bounded:
    """Python's C{re}, never run on a subject longer than L{MAX_SUBJECT}."""

    __slots__ = ("_re",)

    def __init__(self, compiled: re.Pattern[str]) -> None:
        self._re = compiled

    def fullmatch(self, subject: str) -> Any:
        return self._re.fullmatch(subject) if len(subject) <= MAX_SUBJECT else None

    def search(self, subject: str) -> Any:
        return self._re.search(subject) if len(subject) <= MAX_SUBJECT else None

    def sub(self, replacement: str, subject: str) -> str:
        return self._re.sub(replacement, subject) if len(subject) <= MAX_SUBJECT else subject


def compilePattern(pattern: str, engine: str = ENGINE) -> Pattern:
    """Compile C{pattern} once (at config load), or raise L{PatternError} saying why not."""
    if not isinstance(pattern, str) or not pattern:
        raise PatternError("must be a non-empty regular expression")
    if engine == "re2" and _re2 is not None:
        options = _re2.Options()
        options.log_errors = False
        try:
            return _re2.compile(pattern, options)  # type: ignore[no-any-return]
        except _re2.error as e:
            detail = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
            raise PatternError(f"not a valid RE2 pattern ({detail}); backreferences and look-arounds "
                               "are not supported, as they cannot run in linear time") from None
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise PatternError(f"not a valid regular expression: {e}") from None
    _guard(pattern)
    return _Bounded(compiled)


def _guard(pattern: str) -> None:
    """Refuse the shapes that make a backtracking engine exponential."""
    try:
        import re._parser as parser  # type: ignore[import-not-found]
        from re._constants import (  # type: ignore[import-not-found]
            ASSERT,
            ASSERT_NOT,
            GROUPREF,
            GROUPREF_EXISTS,
            MAX_REPEAT,
            MIN_REPEAT,
            POSSESSIVE_REPEAT,
        )
    except ImportError:  # pragma: no cover - Python < 3.11
        import sre_parse as parser  # type: ignore[no-redef]
        from sre_constants import (  # type: ignore[assignment,no-redef]
            ASSERT,
            ASSERT_NOT,
            GROUPREF,
            GROUPREF_EXISTS,
            MAX_REPEAT,
            MIN_REPEAT,
        )
        POSSESSIVE_REPEAT = MAX_REPEAT
    repeats = (MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT)

    def walk(items: Any, insideRepeat: bool) -> None:
        for op, av in items:
            if op in (GROUPREF, GROUPREF_EXISTS):
                raise PatternError("backreferences are refused (they can take exponential time)")
            if op in (ASSERT, ASSERT_NOT):
                raise PatternError("look-arounds are refused (they can take exponential time)")
            if op in repeats:
                _low, high, sub = av
                unbounded = high > 1
                if insideRepeat and unbounded:
                    raise PatternError("a repeat inside a repeat (such as (a+)+) is refused: it can take "
                                       "exponential time on a hostile path")
                walk(sub, insideRepeat or unbounded)
            elif isinstance(av, (list, tuple)):
                for x in av:
                    if isinstance(x, parser.SubPattern):
                        walk(x, insideRepeat)
                    elif isinstance(x, (list, tuple)):
                        for y in x:
                            if isinstance(y, parser.SubPattern):
                                walk(y, insideRepeat)
            elif isinstance(av, parser.SubPattern):
                walk(av, insideRepeat)

    walk(parser.parse(pattern), False)
