"""Shell ``KEY="value"`` files read and written without a shell: VNFS config, node.conf, capsule meta.

One strict parser and one writer, so every reader of a file agrees with every writer:
``dump`` then ``parse`` gives back any value exactly. Values are data, never code: shell
expansions (``$``, backquote) are refused, a newline, CR or NUL cannot be written.

Read: blank lines and ``#`` comments; ``[export ]KEY=value`` (spaces around ``=`` allowed,
kept on rewrite) where the value is double-quoted (``\\`` escapes ``$ ` " \\``),
single-quoted or bare pieces, concatenated as the shell does, up to unquoted whitespace;
an optional trailing ``# comment``.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass

from perceus.common.errors import ReasonError

__all__ = ["Line", "ShellVarsError", "check_value", "dump", "parse", "parse_lines", "quote", "update"]

MAX_TEXT = 1 << 20
MAX_LINE = 1 << 16
MAX_KEY = 256

KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENT = re.compile(r"(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)([ \t]*=[ \t]*)")
_BARE_FORBIDDEN = frozenset(";&|<>()`$")
_DQ_ESCAPES = frozenset('$`"\\')
_UNWRITABLE = frozenset("\n\r\0")


class ShellVarsError(ReasonError):
    """The text is not a KEY="value" file (``path`` is ``source:line``), or a value cannot be written."""


@dataclass
class Line:
    """One line: an assignment (key, value, spacing around ``=``, trailing comment) or kept text.

    ``prefix`` is what stands before the key: indentation and any ``export``.
    """

    text: str
    key: str | None = None
    value: str = ""
    comment: str = ""
    equals: str = "="
    prefix: str = ""


def _scan_value(line: str, start: int, where: str) -> tuple[str, int]:
    """The value from ``start`` up to unquoted whitespace, as the shell reads it."""
    out: list[str] = []
    i = start
    while i < len(line) and not line[i].isspace():
        ch = line[i]
        if ch == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise ShellVarsError("unterminated single quote", where)
            out.append(line[i + 1 : end])
            i = end + 1
        elif ch == '"':
            i += 1
            while True:
                if i >= len(line):
                    raise ShellVarsError("unterminated double quote", where)
                ch = line[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\" and i + 1 < len(line) and line[i + 1] in _DQ_ESCAPES:
                    out.append(line[i + 1])
                    i += 2
                    continue
                if ch in "$`":
                    raise ShellVarsError(f"shell expansion ({ch}) is not supported in values", where)
                out.append(ch)
                i += 1
        elif ch == "\\":
            if i + 1 >= len(line):
                raise ShellVarsError("line continuation is not supported", where)
            out.append(line[i + 1])
            i += 2
        elif ch in _BARE_FORBIDDEN:
            raise ShellVarsError(f"unquoted {ch!r} in value (quote the value)", where)
        elif ch == "~" and i == start:
            raise ShellVarsError("unquoted '~' would be expanded by the shell (quote the value)", where)
        else:
            out.append(ch)
            i += 1
    return "".join(out), i


def _lines(text: str) -> list[str]:
    """Lines as the shell sees them: ended by newline only (a CR before it is dropped)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def parse_lines(text: str, source: str = "") -> list[Line]:
    """Every line, assignments decoded; a line that is neither blank, comment nor assignment is an error."""
    if len(text) > MAX_TEXT:
        raise ShellVarsError(f"larger than {MAX_TEXT} bytes", source)
    lines: list[Line] = []
    for number, raw in enumerate(_lines(text), start=1):
        where = f"{source}:{number}" if source else f"line {number}"
        if len(raw) > MAX_LINE:
            raise ShellVarsError(f"line longer than {MAX_LINE} characters", where)
        if "\0" in raw:
            raise ShellVarsError("NUL byte in line", where)
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            lines.append(Line(raw))
            continue
        match = _ASSIGNMENT.match(stripped)
        if match is None:
            raise ShellVarsError(f'malformed line, expected KEY="value": {stripped[:60]!r}', where)
        value, end = _scan_value(stripped, match.end(), where)
        rest = stripped[end:]
        if rest.strip() and not rest.lstrip().startswith("#"):
            raise ShellVarsError(f"unexpected text after the value: {rest.strip()[:40]!r}", where)
        prefix = raw[: len(raw) - len(raw.lstrip())] + stripped[: match.start(1)]
        lines.append(Line(raw, match.group(1), value, rest if rest.strip() else "", match.group(2), prefix))
    return lines


def parse(text: str, source: str = "") -> dict[str, str]:
    """Keys and values in file order; the last assignment of a key wins."""
    return {line.key: line.value for line in parse_lines(text, source) if line.key}


def check_value(key: str, value: str, source: str = "") -> None:
    """Refuse what cannot be written as one ``KEY="value"`` line."""
    if not KEY_RE.fullmatch(key) or len(key) > MAX_KEY:
        raise ShellVarsError(f"not a shell variable name: {key[:60]!r}", source)
    if any(ch in _UNWRITABLE for ch in value):
        raise ShellVarsError(f"{key}: a value cannot hold a newline, CR or NUL", source)
    if len(value) > MAX_LINE // 2:
        raise ShellVarsError(f"{key}: a value is at most {MAX_LINE // 2} characters", source)


def quote(value: str) -> str:
    """``value`` double-quoted for the shell: ``$ ` " \\`` escaped, so nothing expands."""
    if any(ch in _UNWRITABLE for ch in value):
        raise ShellVarsError("a value cannot hold a newline, CR or NUL")
    return '"' + "".join("\\" + ch if ch in _DQ_ESCAPES else ch for ch in value) + '"'


def dump(values: Mapping[str, str], equals: str = "=") -> str:
    """A whole file: one ``KEY="value"`` line per item, in order."""
    for key, value in values.items():
        check_value(key, value)
    return "".join(f"{key}{equals}{quote(value)}\n" for key, value in values.items())


def update(text: str, values: Mapping[str, str], source: str = "") -> str:
    """``text`` with ``values`` set: comments, order and other keys kept.

    Each assignment of a given key gets the new value, double-quoted (its spacing around
    ``=`` and a trailing comment kept); keys not in the text yet are appended in the
    file's own style.
    """
    for key, value in values.items():
        check_value(key, value, source)
    lines = parse_lines(text, source)
    out: list[str] = []
    for line in lines:
        if line.key in values:
            out.append(f"{line.prefix}{line.key}{line.equals}{quote(values[line.key])}{line.comment}")
        else:
            out.append(line.text)
    seen = {line.key for line in lines if line.key}
    equals = next((line.equals for line in reversed(lines) if line.key), "=")
    out += [f"{key}{equals}{quote(value)}" for key, value in values.items() if key not in seen]
    return "\n".join(out) + "\n"
