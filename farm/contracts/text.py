"""Free text from users and nodes made safe to show: the one place that decides how.

A prompt, an owner, a job's model, a node's name, a pause reason or an error is chosen by whoever
sent it. Printed as is, an escape sequence in it acts on the reader's terminal (OSC 0 retitles the
window, OSC 52 writes the clipboard, CSI moves the cursor and can hide or forge lines), and rich or
Textual markup in it restyles the display or forges text. `safe_text` shows every control character
as a visible escape (`\\x1b`, `\\n`, `\\u202e`); `safe_markup` also escapes markup, for the places
that parse a string as markup. The CLI and the dashboard show free text only through these.
"""

from __future__ import annotations

import re
import unicodedata

# Characters that reorder or hide the text around them (bidirectional overrides and isolates).
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# A rich / Textual markup tag: `[bold]`, `[/]`, `[#ff0000]`, `[@click=...]`, `[$variable]`.
_TAG = re.compile(r"(\\*)(\[[a-zA-Z#/@$][^[]*?])")


def _escaped(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _unsafe(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI


def safe_text(value: object) -> str:
    """`value` as one line with no character that acts on a terminal: C0 and C1 controls (ESC of
    every CSI and OSC sequence among them), DEL, line breaks and bidi overrides become escapes."""
    text = str(value)
    if not any(_unsafe(c) for c in text):
        return text
    return "".join(_escaped(c) if _unsafe(c) else c for c in text)


def safe_markup(value: object) -> str:
    """`safe_text(value)` for a string that rich or Textual parse as markup: every tag is escaped,
    so `[red]` shows as typed."""
    text = _TAG.sub(lambda m: f"{m[1]}{m[1]}\\{m[2]}", safe_text(value))
    return text + "\\" if text.endswith("\\") and not text.endswith("\\\\") else text
