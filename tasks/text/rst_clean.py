"""reStructuredText (Sphinx) source to plain English paragraphs: the prose of a page, without its code.

What goes: code (literal blocks after ``::``, doctest blocks, code directives), tables, comments, labels,
index entries, API signatures (``.. function:: f(x)`` keeps its description, loses its signature), section
adornments. What stays: running text, titles, list items and the text of notes and version remarks
(rendered as Sphinx renders them: "Changed in version 3.4: ..."). Inline markup becomes what a reader sees:
:func:`~os.path.join` -> join(), :pep:`8` -> PEP 8, :ref:`label` -> the section's title, a literal -> its text.

    paragraphs = rst_to_paragraphs(source, labels=section_labels({"page": source}))

Each paragraph is one string; list items and definition terms inside it are separate lines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::(.*)$")
EXPLICIT = re.compile(r"^\s*\.\.(\s|$)")  # comments, labels, footnotes, substitution definitions
LABEL = re.compile(r"^\.\.\s+_([^:]+):\s*$")
ADORNMENT = re.compile(r"^\s*([=\-~^\"'`#*+.:_<>])\1{2,}\s*$")
SIMPLE_TABLE_BORDER = re.compile(r"^\s*=+(\s+=+)+\s*$")
GRID_TABLE = re.compile(r"^\s*[+|]")
OPTION_LINE = re.compile(r"^\s*:[\w-]+:")
LIST_ITEM = re.compile(r"^(?:[*+-]|#\.|\d+\.|\(?\d+\)|[a-z]\.)\s+\S")

# Directives dropped whole: code, tables, navigation, metadata.
DROP = frozenset((
    "code-block", "sourcecode", "code", "doctest", "testcode", "testoutput", "testsetup", "testcleanup",
    "productionlist", "literalinclude", "include", "toctree", "index", "module", "moduleauthor", "sectionauthor",
    "highlight", "currentmodule", "tabularcolumns", "list-table", "csv-table", "table", "image", "figure",
    "contents", "parsed-literal", "program", "raw", "audit-event", "availability", "miscnews", "limited-api-list",
    "rubric", "default-role", "c:namespace", "c:namespace-push", "c:namespace-pop",
))
# Directives whose content is prose of the page, kept without a heading.
KEEP = frozenset((
    "note", "warning", "seealso", "important", "caution", "tip", "hint", "attention", "danger", "error",
    "admonition", "epigraph", "glossary", "highlights", "pull-quote", "container",
))
TITLED = frozenset(("topic", "sidebar"))  # their argument is a title paragraph
VERSION_PHRASES = {
    "versionadded": "New in version {}",
    "versionchanged": "Changed in version {}",
    "deprecated": "Deprecated since version {}",
}
# Everything else that looks like ".. name::" is an object description (function, class, c:type, opcode,
# cmdoption, ...): its signature lines go, its description stays.

ROLE = re.compile(r":(?P<role>[\w:+-]+):`(?P<body>[^`]+)`")
LITERAL = re.compile(r"``(.+?)``")
REFERENCE = re.compile(r"`([^`<]+?)\s*(?:<[^>]*>)?`__?")
DEFAULT_ROLE = re.compile(r"`([^`]+)`")
STRONG = re.compile(r"(?<![\w*\\])\*\*(\S(?:.*?\S)??)\*\*(?![\w*])")
EMPHASIS = re.compile(r"(?<![\w*\\])\*(\S(?:.*?\S)??)\*(?![\w*])")
FOOTNOTE_REF = re.compile(r"\s*\[(?:#[\w-]*|\d+|\*)\]_")
SUBSTITUTION = re.compile(r"\|(\w+)\|")
TITLE_TARGET = re.compile(r"^(.*?)\s*<([^<>]+)>$")
PARENS_ROLES = frozenset(("func", "meth", "c:func", "py:func", "py:meth"))  # Sphinx adds "()" to these
NUMBERED_ROLES = {"pep": "PEP {}", "rfc": "RFC {}", "issue": "bpo-{}", "gh": "gh-{}"}


def section_labels(sources: Mapping[str, str]) -> dict[str, str]:
    """``{label: section title}`` of every ``.. _label:`` that stands right before a section title."""
    labels = {}
    for text in sources.values():
        lines = text.splitlines()
        for i, line in enumerate(lines):
            m = LABEL.match(line)
            if m and (title := _title_after(lines, i + 1)):
                labels[m[1].strip().lower()] = title
    return labels


def _title_after(lines: list[str], i: int) -> str | None:
    while i < len(lines) and (not lines[i].strip() or LABEL.match(lines[i])):
        i += 1
    if i < len(lines) and ADORNMENT.match(lines[i]):  # overline
        i += 1
    if i + 1 < len(lines) and lines[i].strip() and ADORNMENT.match(lines[i + 1]):
        return inline_text(lines[i].strip(), {}, {})
    return None


def rst_to_paragraphs(source: str, labels: Mapping[str, str] | None = None,
                      substitutions: Mapping[str, str] | None = None) -> list[str]:
    """The prose paragraphs of one reST page, inline markup resolved (``labels`` titles ``:ref:`` targets)."""
    lines: list[str] = []
    _walk(source.expandtabs(8).splitlines(), lines)
    labels, substitutions = labels or {}, substitutions or {}
    paragraphs = []
    for block in _assemble(lines):
        text = "\n".join(inline_text(part, labels, substitutions) for part in block)
        text = re.sub(r"[ \t]+", " ", text).strip()
        if re.search(r"[A-Za-z]", text):
            paragraphs.append(text)
    return paragraphs


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """The first line after ``start`` that is not blank and indented at most ``indent``."""
    i = start + 1
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
        i += 1
    return i


def _dedent(lines: list[str]) -> list[str]:
    depth = min((_indent(line) for line in lines if line.strip()), default=0)
    return [line[depth:] for line in lines]


def _walk(lines: list[str], out: list[str]) -> None:
    """Append the prose lines of ``lines`` to ``out`` ("" between paragraphs), dropping code and markup blocks."""
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = _indent(line)
        if not line.strip():
            out.append("")
            i += 1
        elif m := DIRECTIVE.match(line):
            end = _block_end(lines, i, indent)
            _directive(m[2], m[3].strip(), lines[i + 1 : end], out)
            i = end
        elif EXPLICIT.match(line):
            out.append("")
            i = _block_end(lines, i, indent)
        elif ADORNMENT.match(line):
            i += 1
        elif SIMPLE_TABLE_BORDER.match(line):
            i = _simple_table_end(lines, i)
        elif GRID_TABLE.match(line) and line.strip()[-1:] in "+|" or line.lstrip().startswith(">>>"):
            i = _paragraph_end(lines, i)
        else:
            i = _text_line(lines, i, out)


def _text_line(lines: list[str], i: int, out: list[str]) -> int:
    """Emit a text line; a paragraph ending in ``::`` introduces a literal block, which is skipped."""
    line = lines[i].rstrip()
    if not line.endswith("::"):
        out.append(line)
        return i + 1
    kept = line[:-2].rstrip() if line[:-2].endswith((" ", "\t")) or line.strip() == "::" else line[:-1]
    if kept.strip():
        out.append(kept)
    start = i - 1
    while start >= 0 and lines[start].strip():  # the paragraph's first line sets the literal block's indent
        start -= 1
    base = _indent(lines[start + 1])
    j = i + 1
    while j < len(lines) and not lines[j].strip():
        j += 1
    if j < len(lines) and _indent(lines[j]) > base:
        out.append("")
        return _block_end(lines, j, base)
    return i + 1


def _paragraph_end(lines: list[str], i: int) -> int:
    while i < len(lines) and lines[i].strip():
        i += 1
    return i


def _simple_table_end(lines: list[str], i: int) -> int:
    """A simple table ends at a border line followed by a blank line (or the end)."""
    i += 1
    while i < len(lines):
        if SIMPLE_TABLE_BORDER.match(lines[i]) and (i + 1 == len(lines) or not lines[i + 1].strip()):
            return i + 1
        i += 1
    return i


def _directive(name: str, argument: str, block: list[str], out: list[str]) -> None:
    """Emit what a directive contributes to the prose (see DROP, KEEP, VERSION_PHRASES)."""
    split = next((k for k, line in enumerate(block) if not line.strip()), len(block))
    header = [line.strip() for line in block[:split] if not OPTION_LINE.match(line)]
    body = _dedent(block[split:])
    out.append("")
    if name in DROP or (name == "only" and "html" not in argument):
        return
    if name in VERSION_PHRASES or name == "deprecated-removed":
        out.append(_version_remark(name, " ".join([argument, *header]).strip()))
        out.append("")
        _walk(body, out)
    elif name in KEEP or name in TITLED or name == "only" or name == "impl-detail":
        prefix = "CPython implementation detail: " if name == "impl-detail" else ""
        first = " ".join([argument if name != "only" else "", *header]).strip()
        if name in TITLED:
            out += [first, ""]
            first = ""
        _walk([prefix + first, *body] if first or prefix else body, out)
    else:  # an object description: the signatures (argument and header lines) go, the description stays
        _walk(body, out)
    out.append("")


def _version_remark(name: str, argument: str) -> str:
    if name == "deprecated-removed":
        version, removed, *rest = [*argument.split(None, 2), "", ""][:3]
        head = f"Deprecated since version {version}, will be removed in version {removed}"
        text = rest[0].strip()
    else:
        version, _, text = argument.partition(" ")
        head = VERSION_PHRASES[name].format(version)
        text = text.strip()
    return f"{head}: {text}" if text else f"{head}."


def _assemble(lines: list[str]) -> list[list[str]]:
    """Blocks of consecutive lines; within a block, list items and definition terms are parts of their own."""
    blocks: list[list[str]] = []
    block: list[str] = []
    after_term = False
    for k, line in enumerate(lines):
        text = line.strip()
        if not text:
            if block:
                blocks.append(block)
            block, after_term = [], False
            continue
        item = LIST_ITEM.match(text) is not None
        if not block or item or after_term:
            block.append(text)
        else:
            block[-1] += " " + text
        nxt = lines[k + 1] if k + 1 < len(lines) else ""
        # a short line directly above a more indented one is a definition-list term: its definition is a new part
        after_term = bool(nxt.strip()) and _indent(nxt) > _indent(line) and not item and block[-1] == text \
            and len(text) < 80
    if block:
        blocks.append(block)
    return blocks


def inline_text(text: str, labels: Mapping[str, str], substitutions: Mapping[str, str]) -> str:
    """``text`` with reST inline markup replaced by what a reader sees; inline literals are kept verbatim."""
    pieces = LITERAL.split(text)  # odd pieces are the contents of ``literals``
    return "".join(piece if k % 2 else _markup(piece, labels, substitutions) for k, piece in enumerate(pieces))


def _markup(text: str, labels: Mapping[str, str], substitutions: Mapping[str, str]) -> str:
    text = REFERENCE.sub(lambda m: m[1], _roles(text, labels))
    text = DEFAULT_ROLE.sub(lambda m: m[1], text)
    text = STRONG.sub(lambda m: m[1], text)
    text = EMPHASIS.sub(lambda m: m[1], text)
    text = FOOTNOTE_REF.sub("", text)
    text = SUBSTITUTION.sub(lambda m: substitutions.get(m[1], m[1]), text)
    return re.sub(r"\\(.?)", lambda m: "" if m[1] in " \n" else m[1], text)  # escapes: "\ " is nothing


def _roles(text: str, labels: Mapping[str, str]) -> str:
    def render(m: re.Match) -> str:
        role, body = m["role"], m["body"].strip()
        titled = TITLE_TARGET.match(body)
        if titled and titled[1]:
            return titled[1]
        if role == "ref" or role == "doc":
            return labels.get(body.lower(), body.replace("-", " ").replace("_", " "))
        if role in NUMBERED_ROLES:
            return NUMBERED_ROLES[role].format(body)
        if role == "abbr":
            return body.split(" (")[0]
        if role in ("file", "samp"):
            return body.replace("{", "").replace("}", "")
        body = body.lstrip("!")
        if body.startswith("~"):
            body = body[1:].rsplit(".", 1)[-1]
        if role in PARENS_ROLES and not body.endswith(")"):
            body += "()"
        return body

    return ROLE.sub(render, text)
