"""Answer extraction and normalisation: equal values must give equal keys, markers beat stray numbers."""

from fractions import Fraction

import pytest

from crescent_distilabel.answers import answer_key, extract_answer, format_key, normalize_answer, time_limit


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
        ("nothing", "nothing"),  # a word is an answer (a canonical string), not "no answer"
        ("The Nile.", "nile"),
        ("(B)", "B"),
        ("Option b", "B"),
        ("I cannot work this out from the question", None),  # long text is no answer
        (None, None),
        ("7/0", None),
    ],
)
def test_normalize_answer(answer: str | None, key: Fraction | None) -> None:
    assert normalize_answer(answer) == key


# Classes of model output that the first extractor misread; each with several realistic outputs.
EXTRACTION_CLASSES = {
    "several markers on one line: the last counts": [
        ("So the answer is 5. Wait, no: the answer is 6. Actually the answer is 7.", "7"),
        ("The answer is 5, or rather the answer is 8", "8"),
        ("The final answer is 10... no, the final answer is 12 dollars", "12 dollars"),
    ],
    "a plain Answer label": [
        ("He pays 3 * 4 = 12 dollars.\nAnswer: 12", "12"),
        ("Total 5+7.\n**Answer:** 12 apples", "12 apples"),
        ("Step 1: 60 * 3 = 180\nFinal answer: 180 km\nI hope this helps.", "180 km"),
        ("- Answer: $4.50", "$4.50"),
    ],
    "LaTeX without a marker at the end": [
        ("So each person gets \\( \\frac{3}{4} \\).", "\\frac{3}{4}"),
        ("Thus the total is $15$", "15"),
        ("Putting it together:\n\\[ x = \\frac{7}{2} \\]", "\\frac{7}{2}"),
    ],
    "arithmetic after the marker: the result counts": [
        ("#### Answer: 3 * 4 = 12", "12"),
        ("#### 2 hours = 120 minutes", "120 minutes"),
        ("The answer is 1/2 + 1/4 = 3/4 of the pizza", "3/4 of the pizza"),
    ],
    "markdown headings are not markers": [
        ("#### Step 1: Find the cost\n3*2=6.\n#### Step 2: Add tax\n6+1=7\nSo she pays 7 dollars.", "7"),
        ("#### 1. Compute the total\n5+5=10\n#### Final Answer\n10", "10"),
        ("#### Solution\nThe ball costs 0.05 dollars.\n#### Answer: 0.05", "0.05"),
        ("#### Calculating the area:\n8 * 5 = 40 square cm", "40"),
    ],
    "the answer instruction echoed": [
        ('Think step by step. Give the final answer as a single number after "#### Answer:".\n3+4=7. So 7.', "7"),
        ('3+4=7\n#### Answer: 7\nRemember: the final answer goes after "#### Answer:".', "7"),
        ("I will put the answer after '####'. 2*9 = 18\n#### 18", "18"),
        (  # Qwen2.5-Coder-0.5B: the marker echoed first, its reasoning on the next line, the answer boxed at the end
            "#### Answer:\n\nTo determine how many houses have red and blue flowers in total, we need to analyze "
            "the problem carefully. Here is how.\n12 + 12 = 24.\n\nThus, the final answer is \\(\\boxed{24}\\).",
            "24",
        ),
        ("#### Answer:\nLet me work it out step by step first.\nThe total is 7 + 5 = 12.", "12"),
    ],
    "answers that are not numbers": [
        ("The answer is (B).", "(B)"),
        ("#### Answer: B", "B"),
        ("Paris is the capital.\n#### Answer: Paris", "Paris"),
    ],
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param(text, want, id=f"{cls}-{i}") for cls, cases in EXTRACTION_CLASSES.items() for i, (text, want) in
     enumerate(cases)],
)  # fmt: skip
def test_extraction_classes(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_keys_for_answers_that_are_not_numbers_vote_together() -> None:
    keys = [normalize_answer(extract_answer(t)) for t in ("#### Answer: B", "The answer is (B).", "Answer: option b")]
    assert keys == ["B", "B", "B"]
    assert normalize_answer(extract_answer("#### Answer: The Nile")) == normalize_answer("nile.") == "nile"


def test_math_verify_has_a_time_limit_in_the_main_thread() -> None:
    import time

    started = time.monotonic()
    with pytest.raises(TimeoutError), time_limit(0.2):
        time.sleep(5)
    assert time.monotonic() - started < 4  # stopped by the limit, not by the sleep's end
    with time_limit(0.2):  # a block that ends in time is untouched, and the timer is cleared after it
        pass
    time.sleep(0.3)


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


# Chains as a small chat model writes them for each kind of question.
CHOICE_CHAINS = [
    ("Mercury is the planet closest to the Sun.\n#### Answer: C", "C"),
    ("The closest planet is Mercury, which is option (c).\n**Answer:** (C) Mercury", "C"),
    ("Venus is second; Mercury is first. So the correct option is C.", "C"),  # no marker: the option named last
    ("Looking at the options, (A) Venus is wrong and (C) Mercury is right.", "C"),
    ("#### Answer: Mercury", None),  # the option's text, not its letter
    ("The planet is 58 million km from the Sun.", None),  # a number is no option
]


@pytest.mark.parametrize(("chain", "key"), CHOICE_CHAINS)
def test_choice_answers_are_option_letters(chain: str, key: str | None) -> None:
    assert answer_key(extract_answer(chain, "choice"), "choice") == key


def test_text_answers_are_normalised_phrases_and_need_a_marker() -> None:
    chains = [
        "Water boils at sea level when heated enough.\n#### Answer: The boiling point.",
        "Answer: boiling   point",
        "**Final answer:** BOILING POINT!",
    ]
    assert {answer_key(extract_answer(c, "text"), "text") for c in chains} == {"boiling point"}
    assert extract_answer("It boils at 100 degrees, I think.", "text") is None  # no marker: no last number either
    long = "#### Answer: it depends on the pressure of the air above the water and on the altitude"
    assert answer_key(extract_answer(long, "text"), "text") is None  # a sentence, not a short answer


def test_numeric_answers_refuse_words_and_letters() -> None:
    assert answer_key(extract_answer("So she has $1,200.\n#### Answer: $1,200"), "numeric") == Fraction(1200)
    assert answer_key("B", "numeric") is None and answer_key("twelve", "numeric") is None
    assert answer_key("B", "auto") == "B"  # auto keeps today's reading: a letter is an answer


def test_symbolic_answers_agree_by_equivalence() -> None:
    a = answer_key(extract_answer("Collecting terms: \\boxed{2x + 3}"), "symbolic")
    b = answer_key(extract_answer("#### Answer: 3 + 2x"), "symbolic")
    assert a is not None and a == b
    assert answer_key("\\frac{6}{8}", "symbolic") == answer_key("0.75", "symbolic") == Fraction(3, 4)
    assert answer_key("3 + 2x", "auto") != a  # auto reads the plain text's number, not the expression


def test_an_unknown_answer_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown answer kind 'letters'"):
        answer_key("B", "letters")  # type: ignore[arg-type]
