"""Final-answer extraction and normalisation for consensus voting (CRESCENT section 3.3).

The released scripts take the last number in the text and compare raw strings, so "18" and "18.00" vote
for different answers and "$1,200" votes for "200". Here the marked answer is read first, then normalised
to an exact key (:class:`fractions.Fraction`) so equal values vote together. LaTeX that the fast path cannot
read goes to ``math-verify``, which is accurate but about a hundred times slower.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

AnswerKey = Fraction | str
"""An exact, hashable answer: a number as a Fraction, or a canonical string for symbolic answers."""

_NUMBER = r"[-−+]?\s*[$€£¥]?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|[-−+]?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_MARKERS = (
    re.compile(r"####\s*(?:final\s+)?answer\s*[:：]?\s*(.+)", re.IGNORECASE),
    re.compile(r"####\s*(.+)"),
    re.compile(r"(?:the\s+)?final\s+answer\s+is\s*[:：]?\s*(.+)", re.IGNORECASE),
    re.compile(r"final\s+answer\s*[:：]\s*(.+)", re.IGNORECASE),
    re.compile(r"the\s+answer\s+is\s*[:：]?\s*(.+)", re.IGNORECASE),
)
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


def _first_line(value: str) -> str:
    """The answer's own text: up to the end of its line or sentence (a decimal point has no space after)."""
    line = value.strip().split("\n", 1)[0]
    return re.split(r"\.\s", line, maxsplit=1)[0].strip()


def _marked(text: str, markers: tuple[re.Pattern[str], ...], *, need_number: bool) -> str | None:
    """The answer after the last occurrence of the first marker found (a ``\\boxed{}`` in it wins)."""
    for marker in markers:
        found = marker.findall(text)
        if found:
            value = _first_line(found[-1])
            boxed = _boxed(value)
            if boxed:
                return boxed
            if value and (not need_number or _NUMBER_RE.search(value)):
                return value
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer as written: the marked answer if any, else the last number in the text.

    Markers, in order: ``#### Answer:``, ``####``, ``\\boxed{}``, "final answer is", "the answer is".
    """
    if not text:
        return None
    answer = _marked(text, _MARKERS[:2], need_number=False) or _boxed(text)
    answer = answer or _marked(text, _MARKERS[2:], need_number=True)
    if answer:
        return answer
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
        return _latex_key(value)
    match = _NUMBER_RE.search(value)
    if match is None:
        return None
    return _to_fraction(match.group(0))


def _latex_key(value: str) -> AnswerKey | None:
    """Canonical key for a symbolic LaTeX answer via math-verify (slow path, LaTeX only)."""
    try:
        from math_verify import parse
        from math_verify.parser import LatexExtractionConfig
    except ImportError:  # math-verify is optional: the answer stays a string
        return value
    try:
        parsed = parse(f"${value}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)
    except Exception:
        return None
    if not parsed:
        return None
    expr = parsed[0]
    try:
        import sympy

        expr = sympy.simplify(expr)
        if getattr(expr, "is_Rational", False):
            return Fraction(int(expr.p), int(expr.q))
        if getattr(expr, "is_Float", False):
            return Fraction(str(expr)).limit_denominator(10**9)
    except Exception:  # sympy raises many types; keep the unsimplified form
        pass
    return str(expr)


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
