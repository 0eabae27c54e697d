"""The number check's reading rules (README "Reading answers"), one table row per rule."""

import time

import pytest

from saie_lite.tasks import gsm8k, numbers

FORTY = "1234567890" * 4  # a 40-digit answer
WIDE = str.maketrans("0123456789", "".join(chr(0xFF10 + i) for i in range(10)))  # full-width

# (rule, model output, strict reading, flexible reading)
READING = [
    ("strict: '#### N'", "3 + 4 = 7\n#### 7", "7", "7"),
    ("strict: the last '#### N' wins", "#### 10 wait, #### 12", "12", "12"),
    ("strict: 'The answer is N'", "So the answer is 18.", "18", "18"),
    ("strict: 'answer is: **N**'", "The answer is: **72**", "72", "72"),
    ("strict: '####' before 'answer is'", "#### 5. The answer is 6", "5", "6"),
    ("flexible: the last number anywhere", "Add 12 and 30, giving 42 apples.", None, "42"),
    ("no number: nothing read", "I don't know.", None, None),
    ("commas are thousands separators", "#### 1,234,567", "1234567", "1234567"),
    ("dollar sign dropped", "#### $1,234.50", "1234.5", "1234.5"),
    ("dollar sign then a space", "It costs $ 5", None, "5"),
    ("trailing zeros of decimals dropped", "The answer is 18.00", "18", "18"),
    ("leading zeros dropped", "#### 007", "7", "7"),
    ("a bare decimal point number", "#### .5", "0.5", "0.5"),
    ("a full stop after the number is not a decimal", "#### 42.", "42", "42"),
    ("minus attached to digits: negative", "It drops by 5, so -5.\n#### -5", "-5", "-5"),
    ("minus after '=': negative", "x=-3", None, "-3"),
    ("minus in brackets: negative", "(-3)", None, "-3"),
    ("unicode minus sign", "#### \u22124", "-4", "-4"),
    ("minus then a dollar sign", "#### -$4", "-4", "-4"),
    ("a markdown bullet is not a sign", "Steps:\n- 5 apples", None, "5"),
    ("a bullet after '####' is not a sign", "#### - 5", None, "5"),
    ("subtraction with spaces is not a sign", "12 - 5", None, "5"),
    ("subtraction without spaces is not a sign", "12-5", None, "5"),
    ("a hyphenated word is not a sign", "a 3-5 ratio", None, "5"),
    ("-0 is 0", "#### -0", "0", "0"),
    ("-0.0 is 0", "#### -0.00", "0", "0"),
    ("exact at any length: 40 digits", f"#### {FORTY}", FORTY, FORTY),
    (
        "exact at any length: 40 digits with commas",
        "#### 1,000" + ",000" * 12,
        "1" + "0" * 39,
        "1" + "0" * 39,
    ),
    ("no rounding", "#### 0.99999999999999999999999999999999", "0." + "9" * 32, "0." + "9" * 32),
    ("a fraction is no plain answer", "So half of it.\n#### 1/2", None, None),
    ("a mixed number", "It is 3 pies, or #### 1 1/2", None, "3"),
    ("a spaced fraction", "The answer is 3 / 4", None, None),
    ("a power with **", "#### 2**10", None, None),
    ("a negative exponent", "#### 10^-3", None, None),
    ("a negative denominator", "#### 1/-2", None, None),
    ("a fraction after bold", "The answer is **7**/8", None, None),
    ("a fraction on the next line is another matter", "#### 42\n\n3/4 of them", "42", "42"),
    ("a number after an ellipsis", "So the answer is...42", None, "42"),
    ("a fraction after 'answer is'", "Add 3 and 4. The answer is 7/8", None, "4"),
    ("a ratio or a time", "It is 7. The ratio is 3:2 at 10:30", None, "7"),
    ("a power", "#### 2^10", None, None),
    ("a decimal fraction", "#### 1.5/2", None, None),
    ("a fraction with thousands", "We get 9, then 1,234/5", None, "9"),
    ("a slash then a word is no fraction", "#### 12/month", "12", "12"),
    ("a colon then a space is no ratio", "The answer is 5: five", "5", "5"),
    ("full-width digits", "#### \uff11\uff12\uff13", "123", "123"),
    (
        "Arabic-Indic digits",
        "\u0627\u0644\u062c\u0648\u0627\u0628 #### \u0661\u0662\u0663",
        "123",
        "123",
    ),
    ("Devanagari digits after 'answer is'", "The answer is \u096a\u0968.", "42", "42"),
    (
        "full-width thousands and decimal point",
        "#### \uff11\uff0c\uff10\uff10\uff10\uff0e\uff15\uff10",
        "1000.5",
        "1000.5",
    ),
    ("the Arabic decimal separator", "#### \u0663\u066b\u0665", "3.5", "3.5"),
    ("a full-width minus", "#### \uff0d\uff14", "-4", "-4"),
    ("digits of two scripts in one number", "#### 1,\uff12\u0663\u096a", "1234", "1234"),
    ("a superscript is no digit", "x\u00b2 = 4", None, "4"),
    ("a full-width fraction is no plain answer", "#### \uff11/\uff12", None, None),
]


@pytest.mark.parametrize("rule,text,strict,flexible", READING, ids=[r[0] for r in READING])
def test_reading_rules(rule, text, strict, flexible):
    assert numbers.extract_strict(text) == strict
    assert numbers.extract_flexible(text) == flexible


# (rule, gold, output, strict correct)
COMPARING = [
    ("0.999... (32 nines) is not 1", "1", "#### 0.99999999999999999999999999999999", False),
    ("-0 equals 0", "0", "#### -0", True),
    ("18.00 equals 18", "18", "#### 18.00", True),
    ("1,024 equals 1024", "1024", "#### 1,024", True),
    ("40 digits equal", FORTY, f"#### {FORTY}", True),
    ("40 digits differing in the last digit", FORTY, f"#### {FORTY[:-1]}1", False),
    ("a 29-digit answer is simply wrong, not a crash", "5", "#### " + "9" * 29, False),
    ("a 100,000-digit answer", "1" * 100_000, "#### " + "1" * 100_000, True),
    ("full-width 18 equals 18", "18", "#### \uff11\uff18", True),
    ("Arabic-Indic 18.0 equals 18", "18", "#### \u0661\u0668\u066b\u0660", True),
    ("Devanagari 19 is not 18", "18", "#### \u0967\u096f", False),
    ("a 40-digit full-width answer", FORTY, "#### " + FORTY.translate(WIDE), True),
    ("full-width 0.999... is not 1", "1", "#### \uff10." + "\uff19" * 32, False),
]


@pytest.mark.parametrize("rule,gold,output,ok", COMPARING, ids=[r[0] for r in COMPARING])
def test_exact_comparison(rule, gold, output, ok):
    assert gsm8k.score(output, numbers.normalize(gold)).strict_correct is ok


def test_a_reference_in_other_digits_gives_an_ascii_gold():
    # before: the gold kept its script ('\u0661\u0662'), and '#### 12' was marked wrong
    ex = gsm8k.parse_row({"question": "Q?", "answer": "\u0665 + \u0667\n#### \u0661\u0662"}, 0)
    assert ex.answer == "12" and ex.reference.endswith("#### 12")
    assert gsm8k.score("so 5 + 7\n#### 12", ex.answer).strict_correct
    assert numbers.normalize("\uff11\uff12\uff0e\uff10\uff10") == "12"
    assert numbers.normalize("\u0661\u066c\u0662\u0660\u0660") == "1200"


def test_gsm8k_gold_of_any_length():
    ex = gsm8k.parse_row({"question": "Q?", "answer": f"long\n#### {FORTY}"}, 0)
    assert ex.answer == FORTY and ex.reference.endswith(f"#### {FORTY}")


@pytest.mark.parametrize(
    "text",
    [
        "answer is" + " " * 100_000 + "x",
        "answer is " + "*" * 100_000,
        "#### " + " " * 100_000,
        "-" * 100_000 + "x",
        "1," * 50_000,
        "9" * 100_000 + "." * 3,
        "answer is: " * 10_000,
        "$ " * 50_000,
        "1" * 100_000 + "/2",
        "1," * 50_000 + "1/2",
        "\uff11\uff0c" * 50_000,
        "\u0661" * 100_000 + "\u066b" * 3,
    ],
    ids=[
        "spaces",
        "stars",
        "hashes",
        "minuses",
        "commas",
        "digits",
        "repeats",
        "dollars",
        "fraction",
        "fraction-commas",
        "wide-commas",
        "arabic-digits",
    ],  # fmt: skip
)
def test_no_slow_input(text):
    t0 = time.perf_counter()
    numbers.extract_strict(text), numbers.extract_flexible(text), numbers.answer_end(text)
    # milliseconds when linear; a backtracking pattern takes minutes on 100k characters,
    # so a generous bound still catches it on a busy machine
    assert time.perf_counter() - t0 < 10.0


def test_answer_end_for_early_stop():
    assert numbers.answer_end("so 3.\n#### 18\nmore") == len("so 3.\n#### 18")
    assert numbers.answer_end("#### 18") is None  # not finished: more digits may follow


def test_full_eval_over_a_file_with_a_40_digit_answer(tmp_path):
    import json

    from saie_lite import config
    from saie_lite.backends.scripted import ScriptedLearner
    from saie_lite.evaluate.evaluation import evaluate
    from saie_lite.store import Store

    data = tmp_path / "d.jsonl"
    rows = [
        {"question": "Big?", "answer": f"a big one\n#### {FORTY}"},
        {"question": "Small?", "answer": "#### 3"},
        {"question": "Bigger?", "answer": "#### 1"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exs, _ = gsm8k.load(str(data))
    agent = ScriptedLearner()
    # a 40-digit right answer, a 29-digit wrong one (it crashed scoring before), and a
    # number just under 1 that fixed-precision rounding used to call 1
    agent.enqueue(f"#### {FORTY}", "#### " + "9" * 29, "#### 0." + "9" * 32)
    cfg = config.build(overrides={"learner.backend": "scripted", "eval.batch_size": 3})
    store = Store(tmp_path / "saie.sqlite")
    s = evaluate(cfg, gsm8k, exs, [agent], store, "e", tmp_path)
    store.close()
    assert s["status"] == "finished" and s["n"] == 3
    assert [i["strict_correct"] for i in s["items"]] == [True, False, False]
