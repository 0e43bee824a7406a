"""Question cleaning for bait samples (CRESCENT section 3.1).

The released scripts' cleaner deletes every character except letters, digits and a little punctuation, which
corrupts the problems ("$0.75" -> "0. 75", "3/4" -> "34") and drops imperative problems ("Find ...").
Here only the chat wrapper is removed (preambles, labels, solutions and sign-offs); the problem's own text,
numbers, symbols, units and LaTeX are left exactly as written. Every dropped sample gets a reason.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

DROP_REASONS = (
    "empty",
    "refusal",
    "too_short",
    "too_long",
    "no_digits",
    "no_question",
    "no_options",
    "repetitive",
)
"""Every reason :func:`clean_question` can give for dropping a sample."""

CLEANING_VERSION = 4
"""Bumped whenever :func:`clean_question` keeps or drops some text differently (part of a run's fingerprint)."""

_CHATTY_START = (
    r"(?:sure|certainly|of course|absolutely|okay|ok|alright|great|here(?:'|’)?s|here is|here are|"
    r"here you go|below is|i(?:'|’)d be (?:happy|glad)|i would be (?:happy|glad)|happy to help|"
    r"glad to help|let me|i(?:'|’)ll|i will|i have|i(?:'|’)ve)"
)
# A whole leading line of chat: "Sure! Here's a unique problem for you:" (no digits, so no problem text).
_PREAMBLE_LINE = re.compile(rf"^\W*{_CHATTY_START}\b[^0-9\n]*$", re.IGNORECASE)
# Chat and the problem on one line: "Sure! Here's one: A train leaves ..." -> cut through the colon.
_PREAMBLE_INLINE = re.compile(rf"^\W*{_CHATTY_START}\b[^0-9:\n]{{0,120}}:\s*", re.IGNORECASE)
# Chat before a colon that introduces the problem: "I'm ready. Here's a math word problem: 1) ..."
_INTRO = re.compile(
    r"^[^0-9]{0,200}?(?:here(?:'|’)?s|here is)\b[^0-9:\n]{0,80}:\s*"
    r"|^[^0-9]{0,200}?(?:it goes like this|as follows)\s*:\s*",
    re.IGNORECASE,
)
_INTERJECTION = re.compile(r"^(?:sure|certainly|of course|absolutely|okay|ok|alright|great)\s*[!.,]+\s*", re.I)
_LABEL = re.compile(
    r"^(?:#+\s*)?(?:the\s+|a\s+)?(?:(?:unique|new|creative|diverse|high[- ]school)\s+)*(?:math(?:ematics)?\s+)?"
    r"(?:word\s+)?(?:problem|question)(?:\s*(?:#\s*)?\d+)?(?:\s+(?:is|in question))?(?:\s*[:.\-–]\s*|\s+(?=[\"“]))",
    re.IGNORECASE,
)
# Where the problem ends and a solution, an answer or a sign-off begins.
_EPILOGUE = re.compile(
    r"(?:^|\n|(?<=[.?!])\s+)\W{0,4}(?:"
    r"(?:step-by-step\s+)?(?:solution|answer|final answer|hint|explanation|step 1|answer choices)\b\s*\W{0,4}[:\-]"
    r"|####"
    r"|(?:i hope|let me know|feel free|good luck|enjoy|have fun)\b"
    r"|this problem (?:requires|tests|involves|combines|is a|has|can be)\b"
    r"|the (?:final )?answer (?:to (?:this|the) (?:problem|question) )?(?:is|would be|will be)\b"
    r")",
    re.IGNORECASE,
)
# The start of a solution, but also words a problem may use ("... We need to find the total."): these end the
# problem only once it has asked something.
_SOLVING = re.compile(
    r"(?:^|\n|(?<=[.?!])\s+)\W{0,4}"
    r"(?:to solve (?:this|the)|let(?:'|’)s (?:solve|break|start|think)|we (?:can|need to) (?:solve|find the))\b",
    re.IGNORECASE,
)
# A sample that opens by solving is an answer to a problem it never states ("To determine how many ways 5 books can
# be arranged, we use permutations: 5! = 120."): the words it asks with belong to the solution.
_SOLUTION_START = re.compile(
    r"^\W{0,4}(?:to (?:solve|determine|find|calculate|compute|figure out|work out|answer)\b"
    r"(?:[^.?!\n]|\.(?=\d)){0,300}?,\s*"  # up to the comma (a decimal point does not end the clause)
    r"(?:we|you|i|let(?:'|’)s|first)\b"
    r"|let(?:'|’)s (?:solve|break|start|think|calculate|find|determine|begin)\b"
    r"|first,? (?:we|let(?:'|’)s)\b|step 1\b|we (?:can|need to|will|first) (?:solve|find|calculate|determine)\b)",
    re.IGNORECASE,
)
# A question asks ("?") or instructs. Anything else ("A math problem that requires creative thinking.") is not one.
_ASKS = re.compile(
    r"\?|\b(?:find|calculate|compute|determine|solve|evaluate|simplify|express|estimate|convert|prove|show|"
    r"work out|figure out|how|what|which|who|whom|where|when|why|explain|identify|name|list|give|write|choose|"
    r"select|state|describe|compare|predict|round|graph|sketch|factor|expand|rewrite|order|rank|classify)\b",
    re.IGNORECASE,
)
# Leading markdown headings and titles: "# The Garden Problem", "Title: Apple Harvest", "The Lemonade Stand".
_HEADING_LINE = re.compile(r"^\s*(?:#{1,6}\s+.*|title\s*[:\-].*)$", re.IGNORECASE)
_REFUSAL = re.compile(r"^\W*(?:i(?:'|’)m sorry|i am sorry|i cannot|i can(?:'|’)t|as an ai)\b", re.IGNORECASE)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class CleanedQuestion:
    """The outcome of cleaning one sample: the question, or the reason it was dropped."""

    question: str | None
    drop_reason: str | None


def strip_chat(text: str) -> str:
    """Remove chat preambles, ``Problem:`` labels, solutions and sign-offs, keeping the problem verbatim."""
    text = text.replace("\r\n", "\n").replace("**", "").strip()
    lines = text.split("\n")
    while lines and (not lines[0].strip() or _PREAMBLE_LINE.match(lines[0].strip()) or _is_title(lines)):
        lines.pop(0)
    text = "\n".join(lines).strip()
    text = _INTERJECTION.sub("", text)
    text = _PREAMBLE_INLINE.sub("", text, count=1)
    text = _INTRO.sub("", text, count=1)
    for _ in range(2):  # "Problem:" may follow a stripped preamble, or be doubled ("Problem 1: Question:")
        text = _LABEL.sub("", text, count=1).lstrip()
    end = _EPILOGUE.search(text)
    if end is not None and end.start() > 0:
        text = text[: end.start()]
    for solving in _SOLVING.finditer(text):
        if solving.start() > 0 and asks(text[: solving.start()]):
            text = text[: solving.start()]
            break
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    elif text.startswith("“") and text.endswith("”"):
        text = text[1:-1].strip()
    return _unpaired_quotes(text)


def _unpaired_quotes(text: str) -> str:
    """Drop a quote that opens the problem and never closes, or closes it and never opened: the model began
    the problem as a quotation and stopped without closing it (Qwen2.5-Coder-0.5B: 15% of its kept questions),
    or the closing quote was all that remained of it before a cut solution."""
    if (text[:1] == '"' and text.count('"') == 1) or (text[:1] == "“" and "”" not in text):
        text = text[1:].lstrip()
    if (text[-1:] == '"' and text.count('"') == 1) or (text[-1:] == "”" and "“" not in text):
        text = text[:-1].rstrip()
    return text


def asks(text: str) -> bool:
    """Whether a text asks something: a question mark, or a question word or instruction ("Find", "How many")."""
    return _ASKS.search(text) is not None


def _is_title(lines: list[str]) -> bool:
    """The first line is a heading or a title before the problem: a markdown heading or "Title:", or a short
    line with no digits, no end punctuation and nothing asked, with more text after it."""
    first = lines[0].strip()
    if _HEADING_LINE.match(first) and not _LABEL.match(first.lstrip("# ")):
        return True
    rest = "\n".join(lines[1:]).strip()
    short = len(first.split()) <= 8 and not any(ch.isdigit() for ch in first)
    return bool(rest) and short and not first.endswith((".", "?", "!", ":", ",")) and not asks(first)


def is_repetitive(text: str, *, max_ngram_repeats: int = 4, min_unique_ratio: float = 0.25) -> bool:
    """True for degenerate loops that small models fall into ("and then and then and then ...")."""
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < 12:
        return False
    trigrams = Counter(zip(words, words[1:], words[2:]))
    if trigrams and trigrams.most_common(1)[0][1] > max_ngram_repeats:
        return True
    return len(set(words)) / len(words) < min_unique_ratio


# An option label: "A) ...", "(B) ...", "C. ..." at the start of a line, or "(A) x (B) y" inline.
_OPTION = re.compile(r"(?:^|\n)[ \t*_-]*\(?([A-E])[).:][ \t]|\(([A-E])\)[ \t]|(?<=[ \t])([A-E])\)[ \t]")


def option_letters(question: str) -> set[str]:
    """The distinct option letters a multiple-choice question labels (A-E)."""
    return {next(g for g in found if g) for found in _OPTION.findall(question)}


def clean_question(
    text: str | None,
    *,
    min_chars: int = 20,
    max_chars: int = 1500,
    require_digits: bool = True,
    min_options: int = 0,
) -> CleanedQuestion:
    """Clean one raw bait sample, or give the reason (one of :data:`DROP_REASONS`) it must be dropped.

    Args:
        text: the raw generation.
        min_chars: shorter cleaned questions are degenerate.
        max_chars: longer ones are rambling or looping.
        require_digits: math word problems carry numbers; other domains can switch this off.
        min_options: a multiple-choice question needs this many distinct lettered options (``no_options``);
            0 for questions without options.
    """
    if not text or not text.strip():
        return CleanedQuestion(None, "empty")
    if _REFUSAL.match(text):
        return CleanedQuestion(None, "refusal")
    question = strip_chat(text)
    if not question:
        return CleanedQuestion(None, "empty")
    if len(question) < min_chars:
        return CleanedQuestion(None, "too_short")
    if len(question) > max_chars:
        return CleanedQuestion(None, "too_long")
    if require_digits and not any(ch.isdigit() for ch in question):
        return CleanedQuestion(None, "no_digits")
    if min_options and len(option_letters(question)) < min_options:
        return CleanedQuestion(None, "no_options")
    if not asks(question) or (_SOLUTION_START.match(question) and "?" not in question):
        return CleanedQuestion(None, "no_question")
    if is_repetitive(question):
        return CleanedQuestion(None, "repetitive")
    return CleanedQuestion(question, None)
