"""Reading the C of a `%%ebpf` cell, and turning BCC's diagnostics into cell terms.

Pure code plus one helper that captures file descriptor 2: BCC's clang and
its loader write diagnostics and the verifier log there from C/C++, where
Python's sys.stderr never sees them.

Example::

    >>> fns = find_functions("int count(struct xdp_md *ctx) { return XDP_PASS; }")
    >>> fns[0].name, fns[0].kinds
    ('count', ('xdp',))
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# The context struct a function takes tells which program types can run it.
_CONTEXT_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("xdp_md", ("xdp",)),
    ("__sk_buff", ("tc", "cgroup_skb")),
    ("bpf_sock_addr", ("connect4",)),
    ("bpf_raw_tracepoint_args", ("raw_tracepoint",)),
    ("pt_regs", ("kprobe",)),
)
_MACRO_PROBE = re.compile(r"\b(RAW_TRACEPOINT_PROBE|TRACEPOINT_PROBE)\s*\(([^()]*)\)\s*\{")
_FUNCTION = re.compile(r"([A-Za-z_][\w\s\*]*?)\b([A-Za-z_]\w*)\s*\(([^()]*)\)\s*\{")
_NOT_FUNCTIONS = {"if", "for", "while", "switch", "return", "sizeof"}


@dataclass(frozen=True)
class CFunction:
    """A function defined at file scope in the cell."""

    name: str                    # the symbol BCC knows it by
    line: int                    # 1-based cell line of its definition
    static: bool
    kinds: tuple[str, ...]       # program types its context fits; () = no constraint known
    tracepoint: str = ""         # from TRACEPOINT_PROBE(cat, ev) / RAW_TRACEPOINT_PROBE(ev)


def _blank_comments_and_strings(src: str) -> str:
    """Replace comments and literals by spaces (keeping newlines) so braces and names scan cleanly."""
    out: list[str] = []
    i, n = 0, len(src)
    while i < n:
        two = src[i:i + 2]
        if two == "/*":
            end = src.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(re.sub(r"[^\n]", " ", src[i:end]))
            i = end
        elif two == "//":
            end = src.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
        elif src[i] in "\"'":
            quote, j = src[i], i + 1
            while j < n and src[j] != quote and src[j] != "\n":
                j += 2 if src[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(quote + re.sub(r"[^\n]", " ", src[i + 1:j - 1]) + quote if j - i >= 2 else src[i:j])
            i = j
        elif src[i] == "#" and (i == 0 or src[i - 1] == "\n" or src[:i].rsplit("\n", 1)[-1].strip() == ""):
            # Preprocessor lines (with continuations) are not code to scan.
            end = i
            while True:
                nl = src.find("\n", end)
                if nl < 0:
                    end = n
                    break
                if src[nl - 1] == "\\":
                    end = nl + 1
                    continue
                end = nl
                break
            out.append(re.sub(r"[^\n]", " ", src[i:end]))
            i = end
        else:
            out.append(src[i])
            i += 1
    return "".join(out)


def _file_scope(src: str) -> str:
    """The text at brace depth 0 plus each top-level '{' (bodies blanked), same offsets."""
    out: list[str] = []
    depth = 0
    for ch in src:
        if ch == "{":
            out.append("{" if depth == 0 else " ")
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
            out.append(" ")
        elif depth:
            out.append("\n" if ch == "\n" else " ")
        else:
            out.append(ch)
    return "".join(out)


def _kinds_for(params: str) -> tuple[str, ...]:
    for struct, kinds in _CONTEXT_KINDS:
        if re.search(rf"\bstruct\s+{struct}\b", params):
            return kinds
    return ()


def find_functions(src: str) -> list[CFunction]:
    """Functions defined at file scope, in source order (BCC's probe macros included)."""
    scope = _file_scope(_blank_comments_and_strings(src))
    found: list[tuple[int, CFunction]] = []
    macro_spans: list[tuple[int, int]] = []
    for m in _MACRO_PROBE.finditer(scope):
        macro, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        line = scope.count("\n", 0, m.start()) + 1
        if macro == "TRACEPOINT_PROBE" and len(args) == 2:
            fn = CFunction(f"tracepoint__{args[0]}__{args[1]}", line, False, ("tracepoint",), f"{args[0]}:{args[1]}")
        elif macro == "RAW_TRACEPOINT_PROBE" and len(args) == 1:
            fn = CFunction(f"raw_tracepoint__{args[0]}", line, False, ("raw_tracepoint",), args[0])
        else:
            continue
        found.append((m.start(), fn))
        macro_spans.append((m.start(), m.end()))
    for m in _FUNCTION.finditer(scope):
        name = m.group(2)
        if name in _NOT_FUNCTIONS or any(a <= m.start(2) < b for a, b in macro_spans):
            continue
        prefix = m.group(1)
        # The return type must start this declaration (after ';', '}' or a blank line).
        line = scope.count("\n", 0, m.start(2)) + 1
        static = bool(re.search(r"\bstatic\b", prefix))
        found.append((m.start(), CFunction(name, line, static, _kinds_for(m.group(3)))))
    return [fn for _, fn in sorted(found, key=lambda item: item[0])]


def choose_function(functions: list[CFunction], name: str = "") -> CFunction:
    """The function to attach: the one called ``name``, else the first non-static one.

    Raises LookupError with a one-line reason when the cell has none.
    """
    if name:
        for fn in functions:
            if fn.name == name:
                return fn
    candidates = [fn for fn in functions if not fn.static]
    if not candidates:
        raise LookupError("the cell defines no non-static function to attach")
    return candidates[0]


# --- diagnostics -------------------------------------------------------------------------

_COMPILER_LOCATION = re.compile(r"/virtual/main\.c:(\d+):(\d+)")
_VERIFIER_SOURCE = re.compile(r"^; (.*?) @ [\w./-]+:(\d+)\s*$")


def _cell_line(reported: int, snippet: str, cell_lines: list[str]) -> int | None:
    """The cell line clang meant: BCC's rewriter inserts code (TRACEPOINT_PROBE's args struct),
    so the reported line can be past the cell's; the quoted source text is the reliable key."""
    text = snippet.strip()
    if 1 <= reported <= len(cell_lines) and (not text or cell_lines[reported - 1] == text):
        return reported
    candidates = [i + 1 for i, line in enumerate(cell_lines) if text and line == text]
    if not candidates:
        return None
    before = [c for c in candidates if c <= reported]
    return before[-1] if before else candidates[0]


def _map_locations(output: str, cell: str) -> list[tuple[str, int | None, str]]:
    """(output line, cell line or None, column) per output line that names /virtual/main.c."""
    cell_lines = [ln.strip() for ln in cell.splitlines()]
    lines = output.splitlines()
    mapped: list[tuple[str, int | None, str]] = []
    for i, line in enumerate(lines):
        m = _COMPILER_LOCATION.search(line)
        if not m:
            mapped.append((line, None, ""))
            continue
        snippet = lines[i + 1] if i + 1 < len(lines) else ""
        mapped.append((line, _cell_line(int(m.group(1)), snippet, cell_lines), m.group(2)))
    return mapped


def rewrite_compiler_output(output: str, cell: str = "") -> str:
    """Compiler diagnostics with BCC's virtual file name replaced by cell line numbers."""
    out: list[str] = []
    for line, cell_line, col in _map_locations(output, cell) if cell else [(ln, None, "") for ln in output.splitlines()]:
        m = _COMPILER_LOCATION.search(line)
        if m and cell:
            where = f"cell line {cell_line}, col {col}" if cell_line else "code BCC generated"
            line = line[:m.start()] + where + line[m.end():]
        elif m:
            line = _COMPILER_LOCATION.sub(lambda g: f"cell line {g.group(1)}, col {g.group(2)}", line)
        out.append(line)
    return "\n".join(out).strip()


def first_error_line(output: str, cell: str = "") -> int | None:
    """The cell line of the first error in compiler output, when there is one."""
    for line, cell_line, _ in _map_locations(output, cell or ""):
        if _COMPILER_LOCATION.search(line) and re.search(r": (?:fatal )?error", line):
            if cell:
                return cell_line
            m = _COMPILER_LOCATION.search(line)
            return int(m.group(1)) if m else None
    return None


def verifier_excerpt(log: str, cell: str, tail: int = 20) -> str:
    """The end of a verifier log (where the rejection is), with source lines named by cell line.

    BCC's BTF line info names lines of its rewritten source, which do not match
    the cell; the quoted source text does, so it is looked up in the cell.
    """
    lines = [ln for ln in log.strip().splitlines() if not ln.startswith("bpf: Failed to load program")]
    cell_lines = [ln.strip() for ln in cell.splitlines()]
    rewritten: list[str] = []
    for ln in lines[-tail:]:
        m = _VERIFIER_SOURCE.match(ln)
        if m:
            code = m.group(1).strip()
            where = next((i + 1 for i, text in enumerate(cell_lines) if text == code), None)
            ln = f"; {code}" + (f"  (cell line {where})" if where else "")
        rewritten.append(ln)
    return "\n".join(rewritten)


def verifier_reason(log: str) -> str:
    """The verifier's one-line reason: the last line that is not the statistics footer."""
    for ln in reversed(log.strip().splitlines()):
        if ln and not ln.startswith(("processed ", "verification time", "stack depth")) and not ln[0].isdigit():
            if not ln.startswith(";") and not ln.startswith("bpf: Failed"):
                return ln.strip()
    return "the verifier rejected the program"


@contextmanager
def captured_fd2() -> Iterator[list[str]]:
    """Capture what C/C++ code writes to fd 2 in the body; the text is appended to the yielded list."""
    sink: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield sink
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))
