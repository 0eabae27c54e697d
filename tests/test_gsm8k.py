import json

import pytest

from saie_lite.errors import UserError
from saie_lite.tasks import gsm8k


@pytest.mark.parametrize(
    "text,strict,flexible",
    [
        ("She pays 3 + 4 = 7 dollars.\n#### 7", "7", "7"),
        ("The total is $1,234.\n#### $1,234", "1234", "1234"),
        ("So 18.00 in all. The answer is 18.00.", "18", "18"),
        ("It drops by 5, so -5.\n#### -5", "-5", "-5"),
        ("Half is 2.5 kg. The answer is: 2.5", "2.5", "2.5"),
        ("Add 12 and 30, giving 42 apples.", None, "42"),
        ("#### 10 wait, actually #### 12", "12", "12"),
        ("I don't know.", None, None),
        ("The answer is **72**", "72", "72"),
    ],
)
def test_extraction(text, strict, flexible):
    assert gsm8k.extract_strict(text) == strict
    assert gsm8k.extract_flexible(text) == flexible


def test_score_no_number_is_wrong():
    s = gsm8k.score("no idea", "5")
    assert (s.strict, s.flexible, s.strict_correct, s.flexible_correct) == (
        None,
        None,
        False,
        False,
    )
    s = gsm8k.score("5 apples then 6", "6")
    assert not s.strict_correct and s.flexible_correct


def test_parse_row_reference_and_gold():
    ex = gsm8k.parse_row({"question": "Q?", "answer": "48/2 = <<48/2=24>>24\n#### 1,024"}, 3)
    assert ex.answer == "1024" and ex.id == "row-3"
    assert "<<" not in ex.reference and ex.reference.endswith("#### 1024")


@pytest.mark.parametrize(
    "row,reason",
    [
        ({"answer": "#### 1"}, "missing question"),
        ({"question": "Q", "answer": ""}, "missing answer"),
        ({"question": "Q", "answer": "just 4"}, "answer has no '#### N'"),
        ({"question": "Q", "answer": "#### many"}, "text after '####' is not a number"),
    ],
)
def test_malformed_rows(row, reason):
    assert gsm8k.parse_row(row, 0) == reason


def test_load_local_jsonl_counts_skipped(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [
        {"question": "A?", "answer": "x\n#### 3"},
        {"question": "B?", "answer": "no marker"},
        {"question": "", "answer": "#### 2"},
        {"question": "C?", "answer": "y\n#### 4"},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    examples, skipped = gsm8k.load(str(p))
    assert [e.answer for e in examples] == ["3", "4"]
    assert skipped == {"answer has no '#### N'": 1, "missing question": 1}


def test_load_bundled_sample():
    examples, skipped = gsm8k.load("bundled")
    assert len(examples) == 128 and skipped == {}


def test_load_missing_file_is_one_line():
    with pytest.raises(UserError) as e:
        gsm8k.load("./nope/train.jsonl")
    assert (
        str(e.value)
        == "data file not found: nope/train.jsonl (give a .jsonl / .json / .csv / .parquet file "
        "or a hub name)"
    )


def test_load_file_without_usable_rows(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"q": 1}) + "\n")
    with pytest.raises(UserError, match="no usable GSM8K rows"):
        gsm8k.load(str(p))
