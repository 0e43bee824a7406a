"""Final-answer extraction and normalisation for consensus voting (CRESCENT section 3.3).

The released scripts take the last number in the text and compare raw strings, so "18" and "18.00" vote
for different answers and "$1,200" votes for "200". Here the marked answer is read first, then normalised
to an exact key (:class:`fractions.Fraction`) so equal values vote together. LaTeX that the fast path cannot
read goes to ``math-verify``, which is accurate but about a hundred times slower.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from functools import lru_cache
from typing import Any, Literal, get_args

AnswerKey = Fraction | str
"""An exact, hashable answer: a number as a Fraction, or a canonical string (symbolic LaTeX, a letter, a word)."""

EXTRACTION_VERSION = 3
"""Bumped whenever :func:`extract_answer` or :func:`normalize_answer` reads some text differently. It is part
of a run's fingerprint: votes made by another version would differ, so a run is never continued with two."""

AnswerKind = Literal["auto", "numeric", "choice", "text", "symbolic"]
"""What a recipe's answers are, so the vote reads them as such (:func:`answer_key`)."""
ANSWER_KINDS: tuple[str, ...] = get_args(AnswerKind)
TEXT_WORDS = 8
"""The longest short-text answer (in words, after normalising) the ``text`` kind votes with."""

MATH_VERIFY_SECONDS = 2.0
"""Time limit for one LaTeX answer in math-verify and sympy (both can run away on odd input)."""

_NUMBER = r"[-−+]?\s*[$€£¥]?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|[-−+]?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
# GSM8K's marker, with or without a label; the answer is what follows the last one.
_HASHES = re.compile(r"####[ \t]*(?:the[ \t]+)?(?:final[ \t]+)?(?:answer\b[ \t]*(?:is\b)?[ \t]*[:：]?)?", re.I)
# A markdown heading that starts with #### is not an answer: "#### Step 2: ...", "#### 1. Compute the total".
_HEADING = re.compile(
    r"^(?:step|part|phase|stage|section|case|method|approach|solution|explanation|calculations?|conclusion|"
    r"verification|summary|problem|given|analysis|understanding|setting\b|breaking\b|final step)\b"
    r"|^\d+[.)]\s*[A-Za-z]|^[^\d]*:$",
    re.IGNORECASE,
)
# "Answer: 12", "**Answer:** 12", "Final answer: 12" at the start of a line.
_LABEL = re.compile(r"(?:^|\n)[ \t>*_#-]*(?:the[ \t]+)?(?:final[ \t]+)?answer[ \t*_]*[:：]", re.IGNORECASE)
_PHRASES = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\s*[:：]?|final\s+answer\s*[:：]", re.IGNORECASE)
# The answer instruction echoed back ('... a single number after "#### Answer:".') names the marker, not an answer.
_QUOTED_MARKER = re.compile(r"[\"'“‘`]\s*####\s*(?:answer\s*[:：]?)?\s*[\"'”’`]", re.IGNORECASE)
# A math span that ends the text: "... so each gets \( \frac{3}{4} \)." or "... $12$".
_TRAILING_MATH = re.compile(
    r"(?:\\\((?P<a>.+?)\\\)|\\\[(?P<b>.+?)\\\]|\$\$(?P<c>.+?)\$\$|\$(?P<d>[^$\n]+?)\$)[\s.!)\]]*$", re.DOTALL
)
# An option letter: "B", "(b)", "B.", "Option B", or "(B) text" / "B) text" with the option's text after it.
_CHOICE = re.compile(r"^(?:(?:option|choice)\s+)?(?:\(?([A-Ea-e])\)?[.):]?$|\(([A-Ea-e])\)\s|([A-E])[.)]\s)", re.I)
# An option named in running text: "option C", "choice (b)", "(C)", "answer is C".
_NAMED_OPTION = re.compile(r"\b(?:option|choice)\s*\(?([A-Ea-e])\b\)?|\(([A-E])\)|\bis\s+\(?([A-E])\b\)?")
_PLAIN_NUMBER = re.compile(r"[\s\d.,/$€£¥%+−-]+")
_FRAC = re.compile(r"^\\[dt]?frac\s*\{([^{}]+)\}\s*\{([^{}]+)\}$")
_MIXED = re.compile(r"^(\d+)\s+(\d+)\s*/\s*(\d+)$")


def _boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``, with nested braces balanced."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def _value_after(text: str, end: int) -> str:
    """The answer written after a marker ending at ``end``: the rest of its line (or the next line when the
    marker ends its line, as a "#### Final Answer" heading does), up to the end of the sentence."""
    rest = text[end:]
    line, _, after = rest.partition("\n")
    if not line.strip():
        line = next((ln for ln in after.split("\n") if ln.strip()), "")
    value = re.split(r"(?<![\d$])\.\s|\.\s+(?=[A-Z])", line.strip(), maxsplit=1)[0].strip()
    return value.strip(" *_`").rstrip(".").strip()


def _result(value: str) -> str:
    """What a marked answer amounts to: a ``\\boxed{}`` in it, else the right of its last "=" ("3 * 4 = 12",
    "2 h = 120 min"), else the value."""
    boxed = _boxed(value)
    if boxed:
        return boxed
    for sign in ("=", "≈"):
        if sign in value:
            right = value.rsplit(sign, 1)[1].strip()
            if right:
                value = right
    return value


def _last_marked(text: str, marker: re.Pattern[str], *, need: str) -> str | None:
    """The answer after the last occurrence of ``marker`` that gives one. ``need``: "any" text, a "number" (or
    an option letter), or "not_heading" (any text that is not a markdown heading)."""
    for found in reversed(list(marker.finditer(text))):
        value = _value_after(text, found.end())
        if not value:
            continue
        if need == "not_heading" and not found.group(0).lower().rstrip(" \t:：").endswith(("answer", "is")):
            if _HEADING.search(value):
                continue
        result = _result(value)
        if need == "number" and not (_NUMBER_RE.search(result) or _choice(result) or "\\" in result):
            continue
        if result and _answer_like(result):
            return result
    return None


def _answer_like(value: str) -> bool:
    """A number, LaTeX, an option letter or a few words; not a sentence ("#### Answer:" echoed at the start of a
    chain, with the reasoning on the next line)."""
    return bool(_NUMBER_RE.search(value) or "\\" in value or _choice(value) or len(value.split()) <= 3)


def extract_answer(text: str | None, kind: AnswerKind = "auto") -> str | None:
    """The final answer as written.

    In order: the last ``####`` marker that is not a heading (``#### Answer: 12``, ``#### 12``); the last
    ``\\boxed{}``; the last ``Answer:`` label at the start of a line; the last "the answer is" / "final answer:"
    with a number or an option letter after it; a math span that ends the text; the last number. After a marker,
    arithmetic counts by its result (the right of the last "="). Mentions of the marker itself, as in an echoed
    instruction, are ignored; so is a marker whose value is a sentence. Without a marker, the ``choice`` kind
    takes the last option named ("option C", "(C)") instead of a number, and the ``text`` kind gives none.
    """
    if not text:
        return None
    text = _QUOTED_MARKER.sub(" ", text.replace("\r\n", "\n").replace("**", ""))
    answer = _last_marked(text, _HASHES, need="not_heading") or _boxed(text)
    answer = answer or _last_marked(text, _LABEL, need="any") or _last_marked(text, _PHRASES, need="number")
    if answer:
        return answer
    if kind == "choice":
        named = _NAMED_OPTION.findall(text)
        return next(g for g in named[-1] if g) if named else None
    if kind == "text":
        return None
    math = _TRAILING_MATH.search(text.rstrip())
    if math:
        span = next(group for group in math.groups() if group is not None)
        return _result(span.strip())
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].strip() if numbers else None


def _to_fraction(number: str) -> Fraction | None:
    number = number.replace("−", "-").replace(" ", "")
    number = re.sub(r"[$€£¥]", "", number).replace(",", "")
    try:
        if "/" in number:
            num, den = number.split("/", 1)
            return Fraction(num) / Fraction(den) if Fraction(den) != 0 else None
        return Fraction(number)
    except (ValueError, ZeroDivisionError):
        return None


@lru_cache(maxsize=65536)
def normalize_answer(answer: str | None) -> AnswerKey | None:
    """An exact key for an extracted answer: equal values give equal keys.

    "1,200", "$1200.00", "1200." -> Fraction(1200); "50%" -> Fraction(50); "3/4", "0.75", "\\frac{3}{4}" ->
    Fraction(3, 4); "2 1/2" -> Fraction(5, 2). Other LaTeX goes to math-verify; anything else unreadable
    gives None (no answer).
    """
    if answer is None:
        return None
    value = answer.strip().strip("$").strip()
    value = re.sub(r"^\\text\{(.*)\}$", r"\1", value)
    value = value.replace("\\$", "$").replace("\\%", "%").replace("\\!", "").replace("{,}", ",")
    value = value.rstrip(".").strip()
    frac = _FRAC.match(value.lstrip("-"))
    if frac:
        num, den = _to_fraction(frac.group(1)), _to_fraction(frac.group(2))
        if num is not None and den:
            return -num / den if value.startswith("-") else num / den
    mixed = _MIXED.match(value)
    if mixed and int(mixed.group(3)):
        whole, num, den = (int(g) for g in mixed.groups())
        return whole + Fraction(num, den)
    if "\\" in value or "^" in value or "{" in value:
        if len(value) > 300 and threading.current_thread() is not threading.main_thread():
            return None  # no time limit here (see time_limit)
        return _latex_key(value)
    match = _NUMBER_RE.search(value)
    if match is None:
        return _text_key(value)
    return _to_fraction(match.group(0))


def answer_key(answer: str | None, kind: AnswerKind = "auto") -> AnswerKey | None:
    """The voting key of an extracted answer for a declared answer kind.

    - ``auto``: :func:`normalize_answer` (numbers exact, LaTeX symbolic, a letter or a few words as text).
    - ``numeric``: numbers only (a word or a letter is no answer).
    - ``choice``: an option letter A-E, upper case ("(b)", "Option B", "B) 42 km" -> "B").
    - ``text``: case, whitespace, punctuation and a leading article normalised away, at most
      :data:`TEXT_WORDS` words ("The Pacific Ocean." -> "pacific ocean").
    - ``symbolic``: numbers exact, anything else through math-verify, so ``2x+3`` and ``3 + 2x`` agree.
    """
    if answer is None:
        return None
    if kind == "auto":
        return normalize_answer(answer)
    value = answer.strip().strip("*_`").strip()
    if kind == "numeric":
        key = normalize_answer(value)
        return key if isinstance(key, Fraction) else None
    if kind == "choice":
        return _choice(value.strip("$").strip())
    if kind == "text":
        words = _words(value)
        return " ".join(words) if 0 < len(words) <= TEXT_WORDS else None
    if kind == "symbolic":
        if _PLAIN_NUMBER.fullmatch(value):
            return normalize_answer(value)
        return _latex_key(value.strip("$").strip())
    raise ValueError(f"unknown answer kind {kind!r}: use one of {', '.join(ANSWER_KINDS)}")


def _words(value: str) -> list[str]:
    words = re.sub(r"[^\w\s]", " ", value.lower()).split()
    while words and words[0] in ("a", "an", "the"):
        words.pop(0)
    return words


def _choice(value: str) -> str | None:
    found = _CHOICE.match(value.strip())
    return next((g for g in found.groups() if g), "").upper() or None if found else None


def _text_key(value: str) -> str | None:
    """A key for an answer without a number: an option letter ("(B)", "Option b" -> "B"), or a short text in
    lower case without punctuation or a leading article ("The Nile." -> "nile"); longer text is no answer."""
    choice = _choice(value)
    if choice:
        return choice
    words = _words(value)
    return " ".join(words) if 0 < len(words) <= 3 else None


def _latex_key(value: str) -> AnswerKey | None:
    """Canonical key for a symbolic LaTeX answer via math-verify (slow path, LaTeX only)."""
    try:
        import math_verify.parser
        from math_verify import parse
        from math_verify.parser import LatexExtractionConfig
    except ImportError:  # math-verify is optional: the answer stays a string
        return value
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True  # its "provide your own timeout" warning: time_limit does
    try:
        with time_limit(MATH_VERIFY_SECONDS):  # math-verify's own limit needs the main thread: ours says so
            parsed = parse(f"${value}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)
    except Exception:  # a time-out included
        return None
    if not parsed:
        return None
    expr = parsed[0]
    try:
        import sympy

        with time_limit(MATH_VERIFY_SECONDS):
            expr = sympy.simplify(expr)
        if getattr(expr, "is_Rational", False):
            return Fraction(int(expr.p), int(expr.q))
        if getattr(expr, "is_Float", False):
            return Fraction(str(expr)).limit_denominator(10**9)
    except Exception:  # sympy raises many types, or ran out of time; keep the unsimplified form
        pass
    return str(expr)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeoutError` in the block after ``seconds`` (a SIGALRM timer, so only in a process's main
    thread, where distilabel runs a step's ``process``; elsewhere LaTeX longer than 300 characters is refused
    instead, in :func:`normalize_answer`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def format_key(key: AnswerKey | None) -> str | None:
    """A readable form of a key: integers plainly, other fractions as decimals when exact, else a/b."""
    if key is None or isinstance(key, str):
        return key
    if key.denominator == 1:
        return str(key.numerator)
    den = key.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:
        return format(float(key), "f").rstrip("0").rstrip(".") if abs(key) < 10**15 else str(key)
    return f"{key.numerator}/{key.denominator}"
