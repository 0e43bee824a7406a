"""Cleaning must strip the chat wrapper and nothing else: numbers, symbols, units and LaTeX survive."""

import pytest

from crescent_distilabel.cleaning import (
    DROP_REASONS,
    asks,
    clean_question,
    is_repetitive,
    option_letters,
    strip_chat,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "Sure! Here's a unique math word problem for you:\n\nA shirt costs $0.75 more than a hat. "
            "If the hat costs $12.50, what is the total cost?",
            "A shirt costs $0.75 more than a hat. If the hat costs $12.50, what is the total cost?",
        ),
        (
            "Problem: Maria ate 3/4 of a pizza and Tom ate 15% of what was left. How much is left?",
            "Maria ate 3/4 of a pizza and Tom ate 15% of what was left. How much is left?",
        ),
        (
            "**Problem:** The temperature fell from 5°C to -5°C. By how many degrees did it fall?\n\n"
            "**Solution:** It fell by 10 degrees.",
            "The temperature fell from 5°C to -5°C. By how many degrees did it fall?",
        ),
        (
            "Find the value of $x$ if $\\frac{x}{3} + 2 = 7$.",
            "Find the value of $x$ if $\\frac{x}{3} + 2 = 7$.",
        ),
        (
            "Of course! Here is one: A train travels 120 km in 1.5 hours. What is its average speed in km/h?"
            " I hope this helps!",
            "A train travels 120 km in 1.5 hours. What is its average speed in km/h?",
        ),
        (
            "Math Word Problem: A farmer has 1,250 sheep and sells 340. How many remain?\n\nAnswer: 910",
            "A farmer has 1,250 sheep and sells 340. How many remain?",
        ),
        (
            '"Lena saves 20 dollars a week. How many weeks until she has 260 dollars?"',
            "Lena saves 20 dollars a week. How many weeks until she has 260 dollars?",
        ),
        (
            "I'm ready. Here's a math word problem: 1) What is 2 + 2? 2) What is 3 * 3?",
            "1) What is 2 + 2? 2) What is 3 * 3?",
        ),
        (
            "A box holds 12 eggs. How many boxes for 150 eggs?\n\nTo solve this, divide 150 by 12.",
            "A box holds 12 eggs. How many boxes for 150 eggs?",
        ),
        (
            'The math problem is: \n"A snail climbs 3 feet a day in a 20-foot well. How many days to get out?"',
            "A snail climbs 3 feet a day in a 20-foot well. How many days to get out?",
        ),
    ],
)
def test_strip_chat_keeps_the_problem_verbatim(raw: str, expected: str) -> None:
    assert strip_chat(raw) == expected
    assert clean_question(raw).question == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        (None, "empty"),
        ("I'm sorry, but I can't help with that request about 5 apples.", "refusal"),
        ("Problem: 2+2?", "too_short"),
        ("A math word problem with unique and diverse mathematical possibilities for everyone.", "no_digits"),
        ("If 3 cats " + "and then the cats " * 30 + "how many?", "repetitive"),
        ("Sure! Here's a problem:", "empty"),
    ],
)
def test_degenerate_samples_are_dropped_with_a_reason(raw: str | None, reason: str) -> None:
    cleaned = clean_question(raw)
    assert cleaned.question is None
    assert cleaned.drop_reason == reason
    assert reason in DROP_REASONS


def test_length_limits_are_configurable() -> None:
    text = "A car travels 60 miles per hour for 3 hours. How far does it go?"
    assert clean_question(text, max_chars=30).drop_reason == "too_long"
    assert clean_question(text, min_chars=100).drop_reason == "too_short"
    assert clean_question("Name three primary colours of light used in screens?", require_digits=False).question


def test_repetition_detector_spares_normal_problems() -> None:
    normal = (
        "A school has 420 students. 3/7 of them walk to school, 1/4 of the rest take the bus, and the others "
        "are driven by their parents. How many students are driven to school?"
    )
    assert not is_repetitive(normal)
    assert is_repetitive("one two three " * 10)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "# The Garden Problem\n\nA gardener plants 12 rows of 8 tulips. How many tulips are there?",
            "A gardener plants 12 rows of 8 tulips. How many tulips are there?",
        ),
        (
            "Title: Apple Harvest\nTom picks 30 apples a day for 5 days. How many apples does he pick?",
            "Tom picks 30 apples a day for 5 days. How many apples does he pick?",
        ),
        (
            "**The Lemonade Stand**\n\nSarah sells lemonade for $2 a cup and sells 45 cups. What does she earn?",
            "Sarah sells lemonade for $2 a cup and sells 45 cups. What does she earn?",
        ),
        (
            "### Problem: A car travels 60 km in 1.5 hours. What is its speed?",
            "A car travels 60 km in 1.5 hours. What is its speed?",
        ),
    ],
)
def test_headings_and_titles_before_the_problem_go(raw: str, expected: str) -> None:
    assert clean_question(raw).question == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (  # "We need to find the ..." inside the problem is part of it
            "A tank holds 40 liters and leaks 2 liters an hour. We need to find the time until it holds 10 liters. "
            "How many hours is that?",
            "A tank holds 40 liters and leaks 2 liters an hour. We need to find the time until it holds 10 liters. "
            "How many hours is that?",
        ),
        (
            "Sarah has 3 cats. To solve the puzzle, note each cat eats 2 cans a day. Find the cans eaten in a week.",
            "Sarah has 3 cats. To solve the puzzle, note each cat eats 2 cans a day. Find the cans eaten in a week.",
        ),
        (  # after the question, the same words start the solution
            "Tom has 5 apples and buys 7 more. How many apples does he have? We need to find the total: 5+7=12.",
            "Tom has 5 apples and buys 7 more. How many apples does he have?",
        ),
    ],
)
def test_solution_phrases_cut_only_after_the_problem_asks(raw: str, expected: str) -> None:
    assert clean_question(raw).question == expected


@pytest.mark.parametrize(
    "raw",
    [
        "A math problem that requires creative and imaginative thinking. It has 3 parts and 2 answers.",
        "Problem: In a town of 5,000 people, 60% own a bicycle and 25% own a car.",
        "Here is a problem about 4 friends sharing 3 pizzas equally at a party.",
        # answer-shaped bait samples (Qwen2.5-Coder-0.5B writes these): a solution to a problem never stated
        "To determine how many different ways 5 books can be arranged on a shelf, we need to use permutations. "
        "The number of ways is 5! = 120.",
        "To find the total cost of 3 notebooks at $2.50 each, we multiply: 3 * 2.50 = 7.50. So the total is $7.50.",
        "Let's solve this step by step. First, 12 apples divided among 4 friends gives 3 apples each.",
        "Step 1: Calculate the area of the garden: 8 * 5 = 40 square meters.",
    ],
)
def test_a_text_that_asks_nothing_is_no_question(raw: str) -> None:
    assert clean_question(raw).drop_reason == "no_question"
    assert "no_question" in DROP_REASONS


@pytest.mark.parametrize(
    "raw",
    [  # problems that open like a solution but state and ask their own question are kept whole
        "To find the perimeter, you walk around a garden that is 5 m by 3 m. How far do you walk?",
        "To make 1 cake, you need 3 eggs. How many eggs do you need for 4 cakes?",
    ],
)
def test_a_problem_that_opens_like_a_solution_but_asks_is_kept(raw: str) -> None:
    assert clean_question(raw).question == raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [  # Qwen2.5-Coder-0.5B bait samples: the question, then its own (often wrong) answer or a verdict on it
        (
            'The problem is "What is the sum of all the squares of even numbers between 1 and 100?"\n\nThe answer '
            "to this problem is \\(2^4 + 4^4 + 6^4 = 3824\\).",
            "What is the sum of all the squares of even numbers between 1 and 100?",
        ),
        (
            '"Find the smallest prime number greater than 7."\n\nThis problem has no solution, as 7 is the smallest.',
            "Find the smallest prime number greater than 7.",
        ),
        (
            "A shop sells 3 pens for $2. How much do 12 pens cost? The answer is $8.",
            "A shop sells 3 pens for $2. How much do 12 pens cost?",
        ),
        (  # "the answer" inside the problem is the problem's own
            "Tom has 5 apples. The answer he gives his friend is 3 apples. How many apples does he keep?",
            "Tom has 5 apples. The answer he gives his friend is 3 apples. How many apples does he keep?",
        ),
    ],
)
def test_an_answer_or_verdict_after_the_question_goes(raw: str, expected: str) -> None:
    assert clean_question(raw).question == expected


def test_questions_and_instructions_ask() -> None:
    assert (
        asks("Find the area of a 3 by 4 rectangle.") and asks("Is 7 prime?") and asks("How many legs do 3 cats have")
    )
    assert not asks("A farmer has 12 cows and 7 pigs.")


# Multiple-choice samples as the default model wrote them for the science recipe.
FOUR_OPTIONS = (
    "What is the purpose of a renewable energy source?\n\nOptions:\nA) To reduce carbon emissions\n"
    "B) To increase energy efficiency\nC) To provide affordable energy\nD) To promote sustainable development"
)
INLINE = "Which layer of the Earth is mostly liquid iron?\n(A) Crust (B) Mantle (C) Outer core (D) Inner core"
NO_OPTIONS = "A) Why do scientists always use a microscope?"
REPEATED_LABEL = (
    "What type of flower is typically found in a garden?\n\nA) Sunflowers\n\nB) Roses\n\nB) Carnations\n\n"
    "D) Citrus fruits"
)


def test_option_letters_are_read_on_their_lines_or_inline() -> None:
    assert option_letters(FOUR_OPTIONS) == option_letters(INLINE) == set("ABCD")
    assert option_letters(NO_OPTIONS) == {"A"} and option_letters(REPEATED_LABEL) == set("ABD")
    assert option_letters("Tom has 3 apples (a gift) and buys 4. How many?") == set()


def test_multiple_choice_questions_need_their_options() -> None:
    for text in (FOUR_OPTIONS, INLINE):
        cleaned = clean_question(text, require_digits=False, min_options=4)
        assert cleaned.drop_reason is None and "D)" in (cleaned.question or "")
    for text in (NO_OPTIONS, REPEATED_LABEL):
        assert clean_question(text, require_digits=False, min_options=4).drop_reason == "no_options"
    assert clean_question(NO_OPTIONS, require_digits=False).drop_reason is None  # off unless asked for
    assert "no_options" in DROP_REASONS


@pytest.mark.parametrize(
    ("raw", "expected"),
    [  # Qwen2.5-Coder-0.5B's bait samples, as written
        (
            '"Find the area of the rectangle that has dimensions 4 units by 5 units.',
            "Find the area of the rectangle that has dimensions 4 units by 5 units.",
        ),
        (
            '"Find the smallest positive integer \\( n \\) such that \\( 10^{n+1} - 36 < n^2 + 36 \\).',
            "Find the smallest positive integer \\( n \\) such that \\( 10^{n+1} - 36 < n^2 + 36 \\).",
        ),
        ("“How many apples are left if 3 of 12 are eaten?", "How many apples are left if 3 of 12 are eaten?"),
        ('How many apples are left if 3 of 12 are eaten?"', "How many apples are left if 3 of 12 are eaten?"),
        (  # quotes inside the problem are its own, and stay
            'A sign reads "5 for $2". How much do 15 cost?',
            'A sign reads "5 for $2". How much do 15 cost?',
        ),
        (
            '"Tom says "I have 3 coins". How many coins do 4 such boys have?',
            '"Tom says "I have 3 coins". How many coins do 4 such boys have?',
        ),
    ],
)
def test_a_quote_that_opens_or_closes_the_problem_alone_goes(raw: str, expected: str) -> None:
    assert clean_question(raw).question == expected
