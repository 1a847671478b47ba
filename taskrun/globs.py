"""Glob patterns for ``inputs=`` and ``outputs=``: validation, expansion, overlap.

A pattern is a relative posix path with ``*``, ``?`` and ``[...]`` inside one path
segment and ``**`` as a whole segment for any number of segments. A pattern that matches
a directory stands for every file beneath it, so ``outputs=["build"]`` declares the whole
``build`` tree. Wildcards never descend into symlinked directories nor into ``.git``,
``.hg``, ``.svn`` or ``.taskrun``. Patterns may not be absolute nor contain ``..``.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from taskrun.errors import DefinitionError

__all__ = [
    "Pattern",
    "as_wildcard",
    "check_disjoint_outputs",
    "check_inputs_match",
    "check_outputs_avoid",
    "compile_pattern",
    "expand",
    "expand_globs",
    "fill_template",
    "optional",
    "reaches",
    "split_relative",
    "template_fields",
    "under",
    "walk_files",
]


def split_relative(text: str) -> tuple[tuple[str, ...], str]:
    """Split a relative posix path into segments; ``((), reason)`` when it is unsafe."""
    if not text:
        return (), "it is empty"
    if "\0" in text:
        return (), "it contains a NUL byte"
    if text.startswith("/") or re.match(r"[A-Za-z]:[/\\]", text):
        return (), "it is absolute"
    parts = tuple(p for p in text.split("/") if p not in ("", "."))
    if ".." in parts:
        return (), "it contains '..'"
    if not parts:
        return (), "it names the project root itself"
    return parts, ""


_SKIP_DIRS = frozenset({".git", ".hg", ".svn", ".taskrun"})

# -- option-templated outputs: outputs=["results/p_{p}.json"] -----------------------------
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_GLOB_CHARS = re.compile(r"([*?\[])")


def template_fields(pattern: str) -> list[str]:
    """The option names an output pattern is templated by: ``p_{p}.json`` -> ``["p"]``."""
    return _FIELD.findall(pattern)


def as_wildcard(pattern: str) -> str:
    """PATTERN with each ``{option}`` as ``*``: every file it can name, whatever the values."""
    return _FIELD.sub("*", pattern)


def fill_template(pattern: str, values: Mapping[str, str]) -> str:
    """PATTERN with each ``{option}`` replaced by the text of its value, taken literally."""

    # A value is a name, not a glob: `*`, `?` and `[` in it match only themselves.
    def value(m: re.Match[str]) -> str:
        text = values.get(m[1])
        return m[0] if text is None else _GLOB_CHARS.sub(r"[\1]", text)

    return _FIELD.sub(value, pattern)


def template_regex(pattern: str) -> re.Pattern[str] | None:
    """A regex that reads the option values back from a path, if PATTERN has no other glob."""
    literal = _FIELD.split(pattern)[::2]
    if not template_fields(pattern) or any(_GLOB_CHARS.search(t) for t in literal):
        return None
    out, names = [], _FIELD.findall(pattern)
    for i, text in enumerate(literal):
        out.append(re.escape(text))
        if i < len(names):
            # A field used twice must read the same both times.
            seen = names[i] in names[:i]
            out.append(f"(?P={names[i]})" if seen else f"(?P<{names[i]}>[^/]+)")
    return re.compile("".join(out))


_DSTAR = "**"


@dataclass(frozen=True, slots=True)
class _CharSet:
    """One character position of a glob: a set of ranges, or their complement."""

    negated: bool
    ranges: tuple[tuple[str, str], ...]

    def __contains__(self, ch: str) -> bool:
        return any(lo <= ch <= hi for lo, hi in self.ranges) != self.negated

    def regex(self) -> str:
        if not self.negated and len(self.ranges) == 1 and self.ranges[0][0] == self.ranges[0][1]:
            return re.escape(self.ranges[0][0])
        body = "".join(_esc(lo) if lo == hi else f"{_esc(lo)}-{_esc(hi)}" for lo, hi in self.ranges)
        return f"[^/{body}]" if self.negated else f"[{body}]"


def _esc(ch: str) -> str:
    return "\\" + ch if ch in "\\]^-[" else ch


_Token = _CharSet | str  # str is always "*"


def _tokenize(segment: str) -> tuple[_Token, ...]:
    tokens: list[_Token] = []
    i, n = 0, len(segment)
    while i < n:
        ch = segment[i]
        i += 1
        if ch == "*":
            if not tokens or tokens[-1] != "*":
                tokens.append("*")
        elif ch == "?":
            tokens.append(_CharSet(True, ()))
        elif ch == "[" and (end := _class_end(segment, i)) > 0:
            body, i = segment[i:end], end + 1
            negated = body[:1] in ("!", "^")
            body = body[1:] if negated else body
            ranges: list[tuple[str, str]] = []
            k = 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    ranges.append((body[k], body[k + 2]))
                    k += 3
                else:
                    ranges.append((body[k], body[k]))
                    k += 1
            tokens.append(_CharSet(negated, tuple(ranges)))
        else:
            tokens.append(_CharSet(False, ((ch, ch),)))
    return tuple(tokens)


def _class_end(segment: str, start: int) -> int:
    """Index of the ``]`` closing a class opened just before START, or -1."""
    j = start
    if j < len(segment) and segment[j] in "!^":
        j += 1
    if j < len(segment) and segment[j] == "]":
        j += 1
    return segment.find("]", j)


def _is_glob(segment: str) -> bool:
    return any(c in segment for c in "*?[")


@dataclass(frozen=True, slots=True)
class Pattern:
    """A validated glob: literal leading segments, then the rest as tokens and a regex."""

    text: str
    parts: tuple[str, ...]
    prefix: tuple[str, ...]
    rest: tuple[str, ...]
    regex: re.Pattern[str] | None  # matches paths relative to the prefix (None: literal)

    @property
    def literal(self) -> bool:
        return not self.rest

    def matches(self, path: str) -> bool:
        """Whether the relative posix PATH is covered (a directory match covers its files)."""
        parts = tuple(path.split("/"))
        n = len(self.prefix)
        if parts[:n] != self.prefix:
            return False
        if self.regex is None:
            return True
        return len(parts) > n and self.regex.fullmatch("/".join(parts[n:])) is not None


def compile_pattern(text: str, what: str = "glob") -> Pattern:
    parts, problem = split_relative(text)
    if problem:
        raise DefinitionError(
            f"{what} pattern '{text}' is not allowed: {problem}; write a path relative to "
            "the project root that stays inside it (like 'build/*.o')"
        )
    # `a/**/**/b` is `a/**/b`
    parts = tuple(
        p for i, p in enumerate(parts) if not (p == _DSTAR and parts[i - 1 : i] == (_DSTAR,))
    )
    n = next((i for i, p in enumerate(parts) if _is_glob(p)), len(parts))
    prefix, rest = parts[:n], parts[n:]
    regex = None
    if rest:
        out = []
        for i, seg in enumerate(rest):
            last = i == len(rest) - 1
            if seg == _DSTAR:
                out.append(".*" if last else "(?:[^/]+/)*")
            else:
                out.append(_segment_regex(seg) if last else _segment_regex(seg) + "/")
        # A match that is a directory stands for every file beneath it.
        regex = re.compile("(?s:" + "".join(out) + ")(?:/.*)?")
    return Pattern(text, parts, prefix, rest, regex)


def walk_files(
    base: str, *, skip: bool, descend: Callable[[str], bool] | None = None
) -> Iterator[str]:
    """Relative posix paths of the non-directories under BASE; symlinked dirs not followed."""
    stack = [(base, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            it = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with it:
            for entry in it:
                rel = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    if skip and entry.name in _SKIP_DIRS:
                        continue
                    if descend is None or descend(rel):
                        stack.append((entry.path, rel + "/"))
                elif entry.is_symlink() and _is_dir_quiet(entry):
                    continue  # a link to a directory: never walked into
                else:
                    yield rel


def _is_dir_quiet(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def expand(pattern: Pattern, root: str) -> tuple[list[str], bool]:
    """Files (relative posix paths) matched by PATTERN under ROOT, and whether anything exists."""
    base = os.path.join(root, *pattern.prefix) if pattern.prefix else root
    prefix = "/".join(pattern.prefix)
    if pattern.literal:
        try:
            st = os.lstat(base)
        except (FileNotFoundError, NotADirectoryError):
            return [], False
        if stat.S_ISDIR(st.st_mode) or (stat.S_ISLNK(st.st_mode) and os.path.isdir(base)):
            return [f"{prefix}/{rel}" for rel in walk_files(base, skip=False)], True
        return [prefix], True
    assert pattern.regex is not None
    regex = pattern.regex
    descend: Callable[[str], bool] | None = None
    if _DSTAR not in pattern.rest:
        depth = len(pattern.rest)
        partial = [
            re.compile("(?s:" + "/".join(_segment_regex(s) for s in pattern.rest[:k]) + ")")
            for k in range(depth + 1)
        ]

        def descend(rel: str) -> bool:
            k = rel.count("/") + 1
            if k < depth:
                return partial[k].fullmatch(rel) is not None
            return regex.fullmatch(rel) is not None

    sep = prefix + "/" if prefix else ""
    found = [
        sep + rel for rel in walk_files(base, skip=True, descend=descend) if regex.fullmatch(rel)
    ]
    return found, bool(found)


def _segment_regex(segment: str) -> str:
    return "".join("[^/]*" if t == "*" else t.regex() for t in _tokenize(segment))  # type: ignore[union-attr]


def expand_globs(patterns: Sequence[str], root: Path) -> list[PurePosixPath]:
    """Sorted relative paths of the existing files under ROOT that match PATTERNS."""
    root_abs = os.path.abspath(root)
    found: set[str] = set()
    for text in patterns:
        found.update(expand(compile_pattern(text), root_abs)[0])
    return [PurePosixPath(p) for p in sorted(found)]


# --------------------------------------------------------------------------- overlap


def _sets_meet(a: _CharSet, b: _CharSet) -> bool:
    if a.negated and b.negated:
        return True  # each excludes finitely many characters
    if not a.negated and not b.negated:
        return any(max(l1, l2) <= min(h1, h2) for l1, h1 in a.ranges for l2, h2 in b.ranges)
    neg, pos = (a, b) if a.negated else (b, a)
    # The least character of `pos` outside `neg` is a range start of `pos` or just past
    # the end of a range of `neg`: try those.
    candidates = [lo for lo, _ in pos.ranges] + [
        chr(hi_n + 1) for _, hi in neg.ranges if (hi_n := ord(hi)) < 0x10FFFF
    ]
    return any(c in pos and c in neg for c in candidates)


def _meet(
    a: Sequence[object], b: Sequence[object], star: object, same: Callable[..., bool]
) -> bool:
    """Whether two token sequences match a common string.

    STAR matches any run of items (``*`` within a segment, ``**`` over segments); other
    tokens match one item and SAME says whether two of them can match the same one.
    """
    memo: dict[tuple[int, int], bool] = {}

    def go(i: int, j: int) -> bool:
        if (i, j) not in memo:
            memo[i, j] = False  # no cycles arise, but never recurse on an open pair
            if i < len(a) and a[i] == star:
                result = go(i + 1, j) or (j < len(b) and go(i, j + 1))
            elif j < len(b) and b[j] == star:
                result = go(i, j + 1) or (i < len(a) and go(i + 1, j))
            elif i < len(a) and j < len(b):
                result = same(a[i], b[j]) and go(i + 1, j + 1)
            else:
                result = i == len(a) and j == len(b)
            memo[i, j] = result
        return memo[i, j]

    return go(0, 0)


def _segments_meet(a: tuple[_Token, ...], b: tuple[_Token, ...]) -> bool:
    return _meet(a, b, "*", _sets_meet)


def _patterns_meet(p: Pattern, q: Pattern) -> bool:
    """Whether two patterns can name a common file (each also covers what lies beneath it)."""
    a = [_DSTAR if s == _DSTAR else _tokenize(s) for s in p.parts] + [_DSTAR]
    b = [_DSTAR if s == _DSTAR else _tokenize(s) for s in q.parts] + [_DSTAR]
    return _meet(a, b, _DSTAR, _segments_meet)


def check_disjoint_outputs(specs: Mapping[str, Sequence[str]]) -> None:
    """Raise :class:`DefinitionError` if two tasks declare outputs that can overlap.

    SPECS maps task name -> output globs. Two patterns overlap when some path can match
    both, counting a match that is a directory as covering everything beneath it. The
    test is exact for ``*``, ``?``, ``[...]`` and ``**``.
    """
    # perf: two patterns can only meet if one's literal prefix is a prefix of the other's,
    # so each pattern is compared only with those filed under one of its prefixes' prefixes.
    by_prefix: dict[tuple[str, ...], list[int]] = {}
    compiled: list[tuple[str, Pattern]] = []
    for task, patterns in specs.items():
        for text in patterns:
            by_prefix.setdefault(
                (pattern := compile_pattern(text, f"task '{task}': output")).prefix, []
            )
            by_prefix[pattern.prefix].append(len(compiled))
            compiled.append((task, pattern))
    clashes: set[tuple[int, int]] = set()
    for j, (task, pattern) in enumerate(compiled):
        for k in range(len(pattern.prefix) + 1):
            for i in by_prefix.get(pattern.prefix[:k], ()):
                pair = (min(i, j), max(i, j))
                if (
                    compiled[i][0] != task
                    and pair not in clashes
                    and _patterns_meet(pattern, compiled[i][1])
                ):
                    clashes.add(pair)
    if clashes:
        lines = [
            f"  - task '{compiled[i][0]}' output '{compiled[i][1].text}' and task "
            f"'{compiled[j][0]}' output '{compiled[j][1].text}' can name the same file"
            for i, j in sorted(clashes)
        ]
        raise DefinitionError(
            "\n".join(
                [
                    "tasks declare overlapping outputs:",
                    *lines,
                    "(a pattern that names a directory covers every file beneath it); give "
                    "each task its own files or directory, or narrow the globs",
                ]
            )
        )


# --------------------------------------------------------------------------- taskrun's own places


def reaches(text: str, directory: str) -> bool:
    """Whether the glob TEXT can name a file inside DIRECTORY (a relative posix path).

    Wildcards never descend into ``.git``, ``.hg``, ``.svn`` or ``.taskrun``, so a
    directory behind one of those is reached only by a pattern that names it literally.
    """
    pattern = compile_pattern(text)
    parts = tuple(p for p in directory.split("/") if p not in ("", "."))
    hidden = next((i for i, p in enumerate(parts) if p in _SKIP_DIRS), None)
    if hidden is not None and len(pattern.prefix) <= hidden:
        return False
    if not parts:
        return True  # the project root itself
    return _patterns_meet(pattern, compile_pattern("/".join(parts)))


def check_outputs_avoid(
    outputs: Mapping[str, tuple[Sequence[str], str]], places: Mapping[str, str]
) -> None:
    """Raise :class:`DefinitionError` if an output glob can name a file in one of PLACES.

    OUTPUTS maps task name -> (output globs, where it is defined); PLACES maps a relative
    posix directory (the cache, ``.taskrun``) -> what it is, for the message.
    """
    problems = []
    for task, (patterns, where) in outputs.items():
        for text in patterns:
            for directory, what in places.items():
                if reaches(text, directory):
                    problems.append(
                        f"  - task '{task}' ({where}) output '{text}' contains {what} '{directory}'"
                    )
    if problems:
        raise DefinitionError(
            "\n".join(
                [
                    "outputs may not contain taskrun's own files (the cache would be stored "
                    "as an output, restored over itself and cleaned):",
                    *problems,
                    "narrow the glob (e.g. 'build/out/**' instead of 'build/**'), or move the "
                    "cache elsewhere (--cache-dir, or cache-dir in [tool.taskrun])",
                ]
            )
        )


def under(path: str, directories: Sequence[str]) -> bool:
    """Whether the relative posix PATH lies inside one of DIRECTORIES (or is one)."""
    return any(not d or path == d or path.startswith(d + "/") for d in directories)


# --------------------------------------------------------------------------- unmatched inputs


class optional(str):  # noqa: N801 - reads as a marker in a task definition
    """An ``inputs=`` glob that may match nothing: ``inputs=[optional("logs/*.txt")]``.

    Any other input pattern that matches no file (and that no task's outputs can produce)
    is an error before anything runs: usually a typo.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"optional({str.__repr__(self)})"


def _closest(root: str, parts: tuple[str, ...]) -> str:
    """The path PARTS with its first missing segment replaced by the closest existing one."""
    current = root
    for i, part in enumerate(parts):
        if _is_glob(part):
            return ""
        nxt = os.path.join(current, part)
        if os.path.lexists(nxt):
            current = nxt
            continue
        try:
            names = os.listdir(current)
        except OSError:
            return ""
        import difflib

        close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
        return "/".join((*parts[:i], close[0], *parts[i + 1 :])) if close else ""
    return ""


def check_inputs_match(
    specs: Mapping[str, object],
    root: Path,
    *,
    outputs: Mapping[str, tuple[Sequence[str], str]] | None = None,
) -> None:
    """Raise :class:`DefinitionError` naming each ``inputs=`` pattern that matches nothing.

    SPECS maps task name -> TaskSpec (``inputs``, ``outputs``, ``where``). A pattern passes
    when it matches an existing file, is marked :class:`optional`, or can name a file that
    some task in SPECS declares as an output (it will exist once that task has run);
    OUTPUTS (task -> (globs, where)) gives those globs when they are not ``spec.outputs``.
    """
    root_abs = os.path.abspath(root)
    declared = (
        [globs for globs, _ in outputs.values()]
        if outputs is not None
        else [getattr(spec, "outputs", ()) for spec in specs.values()]
    )
    produced = [compile_pattern(text) for globs in declared for text in globs]
    problems = []
    for task, spec in specs.items():
        for text in getattr(spec, "inputs", ()):
            if isinstance(text, optional) or text.startswith(("/", "@")):
                continue  # external inputs (`@name/...`) are resolved and checked elsewhere
            pattern = compile_pattern(text, f"task '{task}': input")
            if expand(pattern, root_abs)[1]:
                continue
            if any(_patterns_meet(pattern, out) for out in produced):
                continue
            close = _closest(root_abs, pattern.parts)
            hint = f" (did you mean '{close}'?)" if close else ""
            problems.append(
                f"  - task '{task}' ({getattr(spec, 'where', '?')}) input '{text}' matches "
                f"no file{hint}"
            )
    if problems:
        raise DefinitionError(
            "\n".join(
                [
                    "input patterns match nothing:",
                    *problems,
                    "fix the path, or mark a glob that may match nothing: "
                    "inputs=[optional('logs/*.txt')]",
                ]
            )
        )
