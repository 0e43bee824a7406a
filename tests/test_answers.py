"""Answer extraction and normalisation: equal values must give equal keys, markers beat stray numbers."""

from fractions import Fraction

import pytest

from crescent_distilabel.answers import extract_answer, format_key, normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So she pays 3 * 4 = 12 dollars.\n#### Answer: 12", "12"),
        ("First 5 then 7.\n#### 1,200", "1,200"),
        ("We get $\\boxed{\\frac{3}{4}}$ of the cake, i.e. 3 out of 4 parts... 99", "\\frac{3}{4}"),
        ("Adding 2 and 3, the answer is 5 apples. Check: 5 - 3 = 2", "5 apples"),
        ("She had 10, gave 4, so 6 remain.", "6"),
        ("#### Answer: \\boxed{42}", "42"),
        ("No numbers at all here.", None),
        ("", None),
        (None, None),
        ("The final answer is: $18.00", "$18.00"),
        ("Total is -5 degrees", "-5"),
    ],
)
def test_extract_answer(text: str | None, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("answer", "key"),
    [
        ("18", Fraction(18)),
        ("18.00", Fraction(18)),
        ("$18.", Fraction(18)),
        ("1,200", Fraction(1200)),
        ("$1,200.00", Fraction(1200)),
        ("50%", Fraction(50)),
        ("3/4", Fraction(3, 4)),
        ("0.75", Fraction(3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("\\dfrac{1}{2}", Fraction(1, 2)),
        ("-\\frac{1}{2}", Fraction(-1, 2)),
        ("2 1/2", Fraction(5, 2)),
        ("-5", Fraction(-5)),
        ("−5", Fraction(-5)),
        ("5 apples.", Fraction(5)),
        ("\\text{12}", Fraction(12)),
        ("€3.50", Fraction(7, 2)),
        ("nothing", None),
        (None, None),
        ("7/0", None),
    ],
)
def test_normalize_answer(answer: str | None, key: Fraction | None) -> None:
    assert normalize_answer(answer) == key


def test_latex_goes_through_math_verify() -> None:
    assert normalize_answer("\\sqrt{4}") == Fraction(2)
    assert normalize_answer("2^{3}") == Fraction(8)
    symbolic = normalize_answer("\\sqrt{2}")
    assert symbolic is not None and symbolic == normalize_answer("\\sqrt{2}")


@pytest.mark.parametrize(
    ("key", "text"),
    [(Fraction(1200), "1200"), (Fraction(3, 4), "0.75"), (Fraction(1, 3), "1/3"), (Fraction(-5, 2), "-2.5")],
)
def test_format_key(key: Fraction, text: str) -> None:
    assert format_key(key) == text
