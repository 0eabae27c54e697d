"""The built-in generated task (``data.task: arithmetic``): reproducible, correct
references, distinct questions, and a dev split that training never sees."""

import re

import pytest

from saie_lite import config
from saie_lite.errors import UserError
from saie_lite.tasks import arithmetic, get_task
from saie_lite.tasks.checks import NumberCheck


def task(**over):
    return get_task(config.build(overrides={"data.task": "arithmetic", **over}).data)


def evaluate(answer: str) -> int:
    """The reference's own worked lines, recomputed: each 'a op b = c' must hold."""
    value = None
    for a, op, b, c in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", answer):
        if value is not None:
            assert int(a) == value  # each step starts from the previous result
        got = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert got == int(c)
        value = got
    return value


def test_reproducible_from_its_seed():
    assert arithmetic.generate(3, 50) == arithmetic.generate(3, 50)
    assert arithmetic.generate(3, 50) != arithmetic.generate(3, 50, seed=7)
    # more rows add problems; the first ones (and their ids) stay the same
    assert arithmetic.generate(3, 80)[:50] == arithmetic.generate(3, 50)
    a, b = task().load("generated", "dev")[0], task().load("generated", "dev")[0]
    assert [(e.id, e.question, e.reference) for e in a] == [
        (e.id, e.question, e.reference) for e in b
    ]


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_every_reference_parses_under_the_number_check_to_the_right_value(difficulty):
    check = NumberCheck()
    examples, skipped = task(**{"data.difficulty": difficulty}).load("generated", "all")
    assert len(examples) == 1000 and skipped == {}
    steps, _, _ = arithmetic.LEVELS[difficulty]
    for e in examples:
        value = evaluate(e.reference)
        assert e.reference.count("\n") == steps + 1  # the start, one line per step, ####
        assert check.answer_key(e.reference) == e.answer == str(value)
        assert check.is_correct(e.reference, e.answer) and value > 0


def test_no_duplicate_questions():
    for d in (1, 2, 5):
        qs = [e.question for e in task(**{"data.difficulty": d}).load("generated", "all")[0]]
        assert len(qs) == len(set(qs)) == 1000


def test_dev_and_train_are_disjoint_and_cover_every_row():
    t = task(**{"data.n_generated": 200})
    train, dev = t.load("generated", "train")[0], t.load("generated", "dev")[0]
    assert len(dev) == 40 and len(train) == 160
    assert not {e.id for e in train} & {e.id for e in dev}
    assert not {e.question for e in train} & {e.question for e in dev}
    assert [e.id for e in t.load("generated", "nodev")[0]] == [e.id for e in train]
    # a fixed part: the dev rows of 200 are the first dev rows of 1000
    more = task().load("generated", "dev")[0]
    assert [e.id for e in more[:40]] == [e.id for e in dev]


def test_difficulty_changes_the_problems_and_bad_input_is_one_line():
    easy, hard = (task(**{"data.difficulty": d}).load("generated", "dev")[0] for d in (1, 5))
    assert max(len(e.reference) for e in easy) < min(len(e.reference) for e in hard)
    with pytest.raises(UserError, match="give --data generated"):
        task().load("data.jsonl", "train")
    with pytest.raises(UserError, match="no split"):
        task().load("generated", "test")
    with pytest.raises(UserError, match="data.difficulty"):
        task(**{"data.difficulty": 6})


def test_another_difficulty_is_another_evaluation_and_the_next_commands_keep_it():
    from saie_lite.evaluate.start import default_eval_dir
    from saie_lite.train.next_steps import data_flags

    def cfg(d):
        over = {"data.task": "arithmetic", "data.path": "generated", "data.difficulty": d}
        return config.build(overrides=over)

    assert default_eval_dir(cfg(1), None) != default_eval_dir(cfg(3), None)
    assert "--set data.difficulty=3" in data_flags(cfg(3).data)
