from pathlib import Path

import pytest

from saie_lite.tasks import commonsense_qa, mmlu
from saie_lite.tasks import multiple_choice as mc

MMLU = Path(__file__).parent / "data" / "mmlu_sample.jsonl"
CSQA = Path(__file__).parent / "data" / "csqa_sample.jsonl"  # 12 CommonsenseQA dev rows


@pytest.mark.parametrize(
    "text,strict,flexible",
    [
        ("The answer is (B) bookstore.", "B", "B"),
        ("I think it's (C), not (A). The answer is: D", "D", "D"),
        ("answer is b", "B", "B"),
        ("Probably A", None, "A"),
        ("(E) seems right", "E", "E"),
        ("No idea at all.", None, None),
        # the article is no option: "a mile" is not (A), and the (B) after it counts
        ("The answer is a mile.", None, None),
        ("I think the answer is a kilogram, which is (B).", "B", "B"),
        ("The answer is (c)", "C", "C"),
    ],
)
def test_letter_extraction(text, strict, flexible):
    assert mc.extract_strict(text, "ABCDE") == strict
    assert mc.extract_flexible(text, "ABCDE") == flexible


def test_commonsense_qa_rows():
    examples, skipped = commonsense_qa.load(str(CSQA))
    assert len(examples) == 12 and skipped == {}
    ex = examples[0]
    assert ex.choices == ["A", "B", "C", "D", "E"]
    assert "(A) " in ex.question and ex.reference.startswith(f"The answer is ({ex.answer})")


def test_mmlu_fixture_skips_malformed():
    examples, skipped = mmlu.load(str(MMLU))
    assert len(examples) == 6
    assert skipped == {
        "choices must be a list of 2-10 options": 1,
        "answer is not a valid choice index or letter": 1,
    }
    mars = examples[1]
    assert mars.answer == "C" and mars.reference == "The answer is (C) Mars."
    assert mmlu.is_correct("Hmm. The answer is (C)", "C") and not mmlu.is_correct("(B)", "C")


def test_local_dev_split_is_disjoint_and_reproducible(tmp_path):
    import json

    from saie_lite.tasks import gsm8k

    p = tmp_path / "d.jsonl"
    p.write_text(
        "\n".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) for i in range(50))
    )
    dev, _ = gsm8k.load(str(p), "dev")
    rest, _ = gsm8k.load(str(p), "nodev")
    assert len(dev) == 10 and len(rest) == 40
    assert not {e.question for e in dev} & {e.question for e in rest}
    assert [e.question for e in gsm8k.load(str(p), "dev")[0]] == [e.question for e in dev]
