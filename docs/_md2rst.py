"""Convert the simple Markdown of the benchmark results and CHANGELOG.md to rst.

myst-parser is not a dependency of the docs, so the Sphinx build turns the few
Markdown constructs these files use into reStructuredText itself:

- ATX headings (``#``, ``##``, ...),
- paragraphs with inline code, ``**bold**``, ``*italic*`` and ``[links](url)``,
- ``-``/``*`` bullet lists (with indented continuation lines and nested items),
- pipe tables (rendered as ``list-table``),
- image lines ``![alt](file.png)``,
- fenced code blocks.

Link reference definitions (``[x]: url``) are dropped. Everything else is kept
as escaped text, so a Markdown file can never produce rst markup by accident.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["md_to_rst"]

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)\s*$")
_BULLET = re.compile(r"^(?P<indent> *)[-*+]\s+(?P<text>.*)$")
_LINK_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*\S+")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_INLINE = re.compile(
    r"(?P<code>`+)(?P<code_text>.+?)(?P=code)"
    r"|\[(?P<link_text>[^\]]+)\]\((?P<link_url>[^)\s]+)\)"
    r"|\*\*(?P<bold>[^*]+)\*\*"
    r"|(?<![\w*])\*(?P<em>[^*\s][^*]*)\*(?![\w*])"
)
_SPECIAL = re.compile(r"([\\`*_|])")


def _escape(text: str) -> str:
    return _SPECIAL.sub(r"\\\1", text)


def inline(text: str) -> str:
    """Markdown inline markup of one line as rst inline markup."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(_escape(text[pos : m.start()]))
        if m.group("code"):
            code = m.group("code_text").strip()
            token = f"``{code}``" if "``" not in code else _escape(code)
        elif m.group("link_text"):
            token = f"`{_escape(m.group('link_text'))} <{m.group('link_url')}>`__"
        elif m.group("bold"):
            token = f"**{_escape(m.group('bold'))}**"
        else:
            token = f"*{_escape(m.group('em'))}*"
        # rst markup must be delimited by spaces or punctuation; an escaped
        # space (rendered as nothing) makes "foo``x``s" legal.
        if m.start() > 0 and text[m.start() - 1].isalnum():
            token = "\\ " + token
        if m.end() < len(text) and text[m.end()].isalnum():
            token += "\\ "
        out.append(token)
        pos = m.end()
    out.append(_escape(text[pos:]))
    return "".join(out)


def _cell(text: str) -> str:
    """A table cell: inline markup, never read as a list marker."""
    rst = inline(text.strip())
    if re.match(r"^([-+*]|\d+[.)]|#\.)(\s|$)", rst):
        rst = "\\" + rst
    return rst


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def _table(rows: list[list[str]]) -> list[str]:
    width = max(len(r) for r in rows)
    out = [".. list-table::", "   :header-rows: 1", ""]
    for row in rows:
        row = row + [""] * (width - len(row))
        for j, cell in enumerate(row):
            marker = "   * -" if j == 0 else "     -"
            text = _cell(cell)
            out.append(f"{marker} {text}" if text else marker)
    out.append("")
    return out


def md_to_rst(
    markdown: str,
    *,
    underlines: str = "=-~^\"'",
    image: Callable[[str], str | None] | None = None,
) -> str:
    """Convert ``markdown`` to rst.

    Parameters
    ----------
    markdown : str
    underlines : str
        Underline character of heading levels 1, 2, ...
    image : callable or None
        Maps an image source of the Markdown to the path used in the rst
        ``image`` directive; returning None drops the image.
    """
    lines = markdown.splitlines()
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            out.extend(inline(p.strip()) for p in para)
            out.append("")
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            flush()
            i += 1
            continue
        if stripped.startswith("```"):
            flush()
            lang = stripped[3:].strip() or "text"
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            i += 1
            out += [f".. code-block:: {lang}", ""]
            out += [f"   {b}" if b.strip() else "" for b in block]
            out.append("")
            continue
        m = _HEADING.match(line)
        if m:
            flush()
            level = min(len(m.group(1)), len(underlines)) - 1
            title = inline(m.group(2))
            out += [title, underlines[level] * max(len(title), 3), ""]
            i += 1
            continue
        m = _IMAGE.match(stripped)
        if m:
            flush()
            src = image(m.group("src")) if image else m.group("src")
            if src:
                out += [f".. image:: {src}", f"   :alt: {m.group('alt') or src}", ""]
            i += 1
            continue
        if _LINK_DEF.match(line):
            flush()
            i += 1
            continue
        if (
            stripped.startswith("|")
            and i + 1 < len(lines)
            and _TABLE_SEP.match(lines[i + 1])
        ):
            flush()
            rows = [_split_row(line)]
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            out += _table(rows)
            continue
        m = _BULLET.match(line)
        if m and not para:
            items: list[tuple[int, list[str]]] = []
            while i < len(lines):
                cur = lines[i]
                b = _BULLET.match(cur)
                if b:
                    items.append((len(b.group("indent")), [b.group("text")]))
                elif cur.strip() and cur.startswith(" ") and items:
                    items[-1][1].append(cur.strip())
                else:
                    break
                i += 1
            levels = sorted({ind for ind, _ in items})
            prev = None
            for ind, text in items:
                depth = levels.index(ind)
                if prev is not None and depth != prev:
                    out.append("")
                pad = "  " * depth
                out.append(f"{pad}- {inline(text[0])}")
                out += [f"{pad}  {inline(t)}" for t in text[1:]]
                prev = depth
            out.append("")
            continue
        para.append(line)
        i += 1
    flush()
    return "\n".join(out).rstrip() + "\n"
