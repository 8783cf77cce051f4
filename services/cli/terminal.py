"""Text from outside the CLI (experiment output, agents' and minds' words, names) made safe for a terminal.

A crash reason is the experiment's last stdout line; a review, an idea title or a paper title is a
model's text. Printed raw, such text can drive the terminal: set the window title, clear the screen,
write the clipboard (OSC 52), hide a hyperlink (OSC 8), move the cursor over earlier lines (CR, CSI).
``rich.markup.escape`` escapes markup only, and rich strips only a few C0 codes (not ESC), so every
string the CLI prints goes through ``clean``: ESC/CSI/OSC/DCS sequences are removed whole, then every
other control character (C0 but newline and tab, DEL, C1) and the bidirectional overrides that reorder
what a line shows. ``SafeConsole`` applies it to every string it renders (``print`` arguments, table
cells, rules), so a print path cannot forget it; the CLI's consoles are all ``SafeConsole``s. Rich's own
styling and progress bars are added after, and stay.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from rich.console import HighlighterType, JustifyMethod, OverflowMethod
    from rich.style import Style
    from rich.text import Text

# ESC [ … final (CSI), ESC ] … BEL/ST (OSC), ESC P/X/^/_ … ST (DCS, SOS, PM, APC), any other ESC + one char;
# and their 8-bit C1 forms (CSI 0x9b, OSC 0x9d, DCS 0x90 …, ending at BEL or ST 0x9c). An unterminated string runs to the end.
_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]PX^_].*?(?:\x07|\x1b\\|\x9c|$)"
    r"|\x1b[\s\S]?"
    r"|\x9b[0-?]*[ -/]*[@-~]?"
    r"|[\x90\x98\x9d\x9e\x9f].*?(?:\x07|\x1b\\|\x9c|$)",
    re.DOTALL,
)
# C0 but \t and \n, DEL, C1; the bidirectional embeddings, overrides and isolates.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: object) -> str:
    """``text`` as a string with no control character but newline and tab, and no escape sequence."""
    return _CONTROL.sub("", _SEQUENCE.sub("", str(text)))


def has_control(text: str) -> bool:
    """Whether ``text`` holds anything ``clean`` removes (tests use it on what the CLI printed)."""
    return clean(text) != text


class SafeConsole(Console):
    """A rich Console that renders every string through ``clean`` (rich's own styling is added after)."""

    def render_str(
        self,
        text: str,
        *,
        style: str | Style = "",
        justify: JustifyMethod | None = None,
        overflow: OverflowMethod | None = None,
        emoji: bool | None = None,
        markup: bool | None = None,
        highlight: bool | None = None,
        highlighter: HighlighterType | None = None,
    ) -> Text:
        return super().render_str(
            clean(text), style=style, justify=justify, overflow=overflow, emoji=emoji, markup=markup, highlight=highlight, highlighter=highlighter,
        )
