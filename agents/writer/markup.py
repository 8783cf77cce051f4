"""The sections' small markup, rendered to LaTeX and to Markdown.

Minds write plain text with: blank lines between paragraphs, ``- `` at the
start of a line for a bullet, `backticks` for identifiers, and ``[@key]`` or
``[@a; @b]`` for citations. Everything else is text, escaped for LaTeX here,
so a mind can never inject LaTeX (or break the build with a stray ``%``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from bus.schema import Reference

CITE = re.compile(r"\[(@[^\]\s;]+(?:\s*;\s*@[^\]\s;]+)*)\]")
CODE = re.compile(r"`([^`]+)`")


class Tex(str):
    """A string that is already LaTeX; the template does not escape it again."""


_TEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "α": r"\ensuremath{\alpha}", "±": r"\ensuremath{\pm}", "→": r"\ensuremath{\rightarrow}",
    "≥": r"\ensuremath{\geq}", "≤": r"\ensuremath{\leq}", "×": r"\ensuremath{\times}", "≈": r"\ensuremath{\approx}", "·": r"\ensuremath{\cdot}",
    "−": "-", "–": "--", "—": "---", "“": "``", "”": "''", "‘": "`", "’": "'", "…": r"\ldots{}",
    "`": r"\textasciigrave{}",  # a stray backtick, not a code span: never an opening quote
}


def tex_escape(text: str) -> Tex:
    out = []
    for ch in str(text):
        if ch in _TEX_CHARS:
            out.append(_TEX_CHARS[ch])
        elif ord(ch) < 32 and ch not in "\n\t" or ord(ch) == 127:
            continue  # a control character (an ESC from a model or a template) never reaches TeX
        elif ord(ch) < 128 or ch.isalpha() and ord(ch) < 0x180:
            out.append(ch)  # ASCII, and the Latin letters utf8 inputenc knows
        else:
            out.append("?")
    return Tex("".join(out))


def breakable(text: str, every: int = 16) -> Tex:
    """``text`` escaped, free to wrap after ``/``, ``@`` and ``:`` and within a long run (an image digest, a path) every ``every`` characters."""
    pieces = [part[i : i + every] for part in re.split(r"(?<=[/@:\s])", str(text)) for i in range(0, len(part), every)]
    return Tex(r"\allowbreak{}".join(tex_escape(p) for p in pieces if p))


_LATEX_CITE = re.compile(r"~?\\cite[a-z]*\*?(?:\[[^\]]*\])*\{([^}]*)\}")
_MATH = re.compile(r"\$([^$]*)\$")
_MATH_WORDS = {"alpha": "α", "pm": "±", "leq": "≤", "le": "≤", "geq": "≥", "ge": "≥", "times": "×", "approx": "≈",
               "rightarrow": "→", "to": "→", "cdot": "·"}
_COMMAND_ARG = re.compile(r"\\([a-zA-Z]+)\*?(?:\[[^\]]*\])?\{([^{}]*)\}")
_COMMAND = re.compile(r"\\([a-zA-Z]+)\b\s*")


def normalize(text: str) -> str:
    """Turn the light LaTeX an LLM tends to write into this markup, so it is escaped like any text.

    ``\\cite{a,b}`` becomes ``[@a; @b]``, ``\\texttt{x}`` a code span, ``$p < 0.05$`` plain
    text with Unicode symbols, ``\\%`` a percent sign; other commands keep only their text.
    """
    text = _LATEX_CITE.sub(lambda m: " [" + "; ".join("@" + k.strip() for k in m.group(1).split(",") if k.strip()) + "]", text)
    text = re.sub(r"\\([%&_#$])", r"\1", text)

    def math(m: re.Match[str]) -> str:
        inner = re.sub(r"\\([a-zA-Z]+)", lambda c: _MATH_WORDS.get(c.group(1), c.group(1)), m.group(1))
        return inner.replace("\\,", " ").replace("{", "").replace("}", "")

    text = _MATH.sub(math, text)
    for _ in range(3):  # nested commands, innermost first
        text = _COMMAND_ARG.sub(lambda m: f"`{m.group(2)}`" if m.group(1) == "texttt" else m.group(2), text)
    return _COMMAND.sub("", text)


def cited_keys(text: str) -> list[str]:
    return [k.strip().lstrip("@") for m in CITE.finditer(text) for k in m.group(1).split(";")]


def _inline(text: str, known: set[str], cite: Callable[[list[str]], str], code: Callable[[str], str], esc: Callable[[str], str]) -> str:
    """Escape text between citations and code spans; drop citations of unknown keys."""
    out, pos = [], 0
    pattern = re.compile(f"{CITE.pattern}|{CODE.pattern}")
    for m in pattern.finditer(text):
        if m.group(1) is not None:
            out.append(esc(text[pos : m.start()].rstrip()))
            keys = [k.strip().lstrip("@") for k in m.group(1).split(";")]
            keys = [k for k in keys if k in known]
            if keys:
                out.append(cite(keys))
        else:
            out.append(esc(text[pos : m.start()]))
            out.append(code(m.group(2)))
        pos = m.end()
    out.append(esc(text[pos:]))
    return "".join(out)


def _blocks(text: str) -> list[tuple[str, list[str]]]:
    """Paragraphs and bullet lists, in order."""
    blocks: list[tuple[str, list[str]]] = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        lines = [ln.strip() for ln in chunk.splitlines() if ln.strip()]
        if not lines:
            continue
        if all(ln.startswith("- ") for ln in lines):
            blocks.append(("list", [ln[2:] for ln in lines]))
        else:
            blocks.append(("para", [" ".join(lines)]))
    return blocks


def inline_tex(text: str, known: set[str] | None = None) -> Tex:
    """One line of markup (a title, a caption, a table cell) as LaTeX: code spans as \\texttt, the rest escaped."""
    return Tex(_inline(text, known or set(), lambda ks: r"~\citep{" + ",".join(ks) + "}",
                       lambda c: r"\texttt{" + tex_escape(c) + "}", tex_escape))


def to_tex(text: str, known: set[str]) -> Tex:
    def render(s: str) -> str:
        return inline_tex(s, known)

    parts = []
    for kind, items in _blocks(text):
        if kind == "list":
            parts.append("\\begin{itemize}\n" + "\n".join(r"\item " + render(i) for i in items) + "\n\\end{itemize}")
        else:
            parts.append(render(items[0]))
    return Tex("\n\n".join(parts))


def author_year(ref: Reference) -> str:
    if not ref.authors:
        who = ref.title.split(":")[0][:40] or ref.key
    else:
        last = ref.authors[0].split(",")[0].split()[-1] if "," not in ref.authors[0] else ref.authors[0].split(",")[0]
        who = last + (" et al." if len(ref.authors) > 2 else f" and {ref.authors[1].split()[-1]}" if len(ref.authors) == 2 else "")
    return f"{who}, {ref.year}" if ref.year else who


def to_markdown(text: str, refs: dict[str, Reference]) -> str:
    def render(s: str) -> str:
        return _inline(s, set(refs), lambda ks: " (" + "; ".join(author_year(refs[k]) for k in ks) + ")", lambda c: f"`{c}`", lambda t: t)

    parts = []
    for kind, items in _blocks(text):
        parts.append("\n".join(f"- {render(i)}" for i in items) if kind == "list" else render(items[0]))
    return "\n\n".join(parts)
