"""The text an edit instruction asks for: the quoted strings of English and Chinese instructions.

Quote pairs recognised (``QUOTE_PAIRS``): ASCII ``"..."`` and ``'...'``, typographic ``“...”`` and ``‘...’``,
full-width ``＂...＂``, CJK corner brackets ``「...」`` and ``『...』``, title marks ``《...》``, guillemets
``«...»``. Single quotes double as apostrophes ("don't", "It’s"), so a single-quoted span must not open right
after, or close right before, a Latin letter or digit (Chinese text may touch the quotes: ``改为‘新品’``); double
quotes and brackets have no such rule. Empty or whitespace-only quotes are skipped.

``parse_text_edit`` turns the quoted strings into (old text, new text):

- one quoted string: it is the new text (``Change the title to "SALE"``, ``把标题改成“促销”``);
- two or more, joined by a replacement word (``"A" to "B"``, ``'A' with 'B'``, ``“A”改成“B”``, ``「A」→「B」``;
  see ``_REPLACE_JOINERS``): the first is the old text, the second the new one;
- otherwise the first is the new text and the old one stays unknown (``Add "OPEN" next to "CAFE"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["QUOTE_PAIRS", "TextEditRequest", "quoted_strings", "parse_text_edit"]

QUOTE_PAIRS: tuple[tuple[str, str], ...] = (
    ('"', '"'), ("\u201c", "\u201d"), ("\uff02", "\uff02"), ("\u300c", "\u300d"), ("\u300e", "\u300f"),
    ("\u300a", "\u300b"), ("\u00ab", "\u00bb"), ("'", "'"), ("\u2018", "\u2019"),
)
_APOSTROPHE_LIKE = {"'", "\u2018"}
_LATIN_WORD = "[A-Za-z0-9\u00c0-\u024f]"  # apostrophes sit inside words of Latin-script languages only


def _pattern(open_q: str, close_q: str) -> str:
    o, c = re.escape(open_q), re.escape(close_q)
    body = f"(?P<q{ord(open_q)}>[^{o}{c}\\n]+?)"
    if open_q in _APOSTROPHE_LIKE:
        # an apostrophe inside a word (don't, It's) neither opens nor closes a quote
        return f"(?<!{_LATIN_WORD}){o}{body}{c}(?!{_LATIN_WORD})"
    return f"{o}{body}{c}"


_QUOTED = re.compile("|".join(_pattern(o, c) for o, c in QUOTE_PAIRS))

# What may stand between an old and a new quoted text in a replacement instruction (nothing else may).
_REPLACE_JOINERS = re.compile(
    r"^\s*(?:(?:to|with|into|by|for|->|=>|→)(?:\s+(?:read|say|be|the|a|new|text|word|words|phrase|string))*"
    r"|(?:替换|改写|修改|更改|[改换变])?[成为]|->|→)"
    r"\s*(?:的)?\s*(?:文字|文本|字样)?\s*[:：]?\s*$",
    re.IGNORECASE)


@dataclass(frozen=True)
class TextEditRequest:
    """What a text-edit instruction asks for. ``old`` is ``None`` when the instruction does not say."""

    new: str
    old: str | None = None


def quoted_strings(instruction: str) -> list[tuple[str, int, int]]:
    """Every non-empty quoted string of ``instruction`` as (text stripped, start, end) of the quoted span."""
    found = []
    for match in _QUOTED.finditer(instruction):
        text = next(g for g in match.groups() if g is not None).strip()
        if text:
            found.append((text, match.start(), match.end()))
    return found


def parse_text_edit(instruction: str) -> TextEditRequest | None:
    """(old, new) text of a text-edit instruction; ``None`` when nothing is quoted (see the module docstring)."""
    quotes = quoted_strings(instruction)
    if not quotes:
        return None
    if len(quotes) >= 2:
        (first, _, end_first), (second, start_second, _) = quotes[0], quotes[1]
        if _REPLACE_JOINERS.match(instruction[end_first:start_second]):
            return TextEditRequest(new=second, old=first)
    return TextEditRequest(new=quotes[0][0])
