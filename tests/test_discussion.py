from saie_lite.protocols import Example
from saie_lite.train import prompts as d

EX = Example("e1", "What is 2+3?", "2+3=5\n#### 5", "5")


def test_partner_prompt_stance_and_reference():
    sup = d.partner_chat(EX, ["It is 6.\n#### 6"], "supportive", True)
    adv = d.partner_chat(EX, ["It is 6.\n#### 6"], "adversarial", False)
    assert sup[0]["content"] == adv[0]["content"] == d.PARTNER_SYSTEM
    assert sup[1]["content"].endswith(d.STANCE_INSTRUCTION["supportive"])
    assert adv[1]["content"].endswith(d.STANCE_INSTRUCTION["adversarial"])
    assert "Reference solution" in sup[1]["content"] and "2+3=5" in sup[1]["content"]
    assert "Reference solution" not in adv[1]["content"]
    assert sup[1]["content"].index("What is 2+3?") < sup[1]["content"].index("It is 6.")


def test_partner_prompt_remarks_on_latest_turn():
    chat = d.partner_chat(EX, ["a0 text", "m1 text", "a1 text"], "adversarial", True)
    body = chat[1]["content"]
    assert "Student earlier:\na0 text" in body and "You earlier:\nm1 text" in body
    assert "Student's answer:\na1 text" in body


def test_discussion_chat_alternates_roles():
    base = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    chat = d.discussion_chat(base, ["a0", "m1"])
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    assert chat[2]["content"] == "a0" and "m1" in chat[3]["content"]
    assert base == [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]


def test_choose_target():
    ref = EX.reference
    assert d.choose_target(ref, "mine\n#### 5", True, "reference") == ref
    assert d.choose_target(ref, "mine\n#### 5", True, "reference_or_revision") == "mine\n#### 5"
    assert d.choose_target(ref, "mine\n#### 4", False, "reference_or_revision") == ref


def test_clip_text_marks_cut():
    assert d.clip_text("x" * 100, 0.5) == "x" * 50 + " [...]"
    assert d.clip_text("short", 0.5) == "short"
