"""Inference strategies with scripted agents: prompts, turns, votes and the tie rule."""

from saie_lite.backends.scripted import ScriptedLearner
from saie_lite.evaluate import strategies as debate
from saie_lite.protocols import Example
from saie_lite.tasks import gsm8k

EXS = [Example("a", "What is 2+2?", "#### 4", "4"), Example("b", "What is 3+3?", "#### 6", "6")]


def test_majority_and_ties():
    assert debate.majority(["4", "5", "4"]) == ("4", 0)
    assert debate.majority(["5", "4", "4"]) == ("4", 1)
    assert debate.majority(["5", "4"]) == ("5", 0)  # tie: earliest agent wins
    assert debate.majority([None, "7", None, "8"]) == ("7", 1)
    assert debate.majority([None, None]) == (None, 0)


def test_self_consistency_votes_over_k_samples():
    agent = ScriptedLearner()
    agent.enqueue("#### 4", "#### 5", "#### 4", "#### 7", "#### 6", "#### 7")
    res = debate.run_self_consistency(agent, gsm8k, EXS, 32, k=3, temperature=0.7)
    assert [r.final_key for r in res] == ["4", "7"]
    assert len(agent.history[0]["chats"]) == 6  # one batched call of k x items


def test_self_discussion_feeds_previous_answer():
    agent = ScriptedLearner()
    agent.enqueue("first try #### 5", "first #### 6", "fixed #### 4", "kept #### 6")
    res = debate.run_self_discussion(agent, gsm8k, EXS, 32, rounds=1)
    second = agent.history[1]["chats"][0][-1]["content"]
    assert "Another agent answered:\nfirst try #### 5" in second
    assert [r.final_key for r in res] == ["4", "6"]
    assert [len(r.turns) for r in res] == [2, 2]


def test_debate_agents_see_each_other_and_vote():
    agents = [ScriptedLearner(name="x"), ScriptedLearner(name="y"), ScriptedLearner(name="z")]
    agents[0].enqueue("#### 4", "#### 6", "#### 4", "#### 6")
    agents[1].enqueue("#### 5", "#### 6", "#### 5", "#### 1")
    agents[2].enqueue("#### 4", "#### 2", "#### 5", "#### 2")

    def respond(a, chats):
        return agents[a].generate(chats, 32, 0.7)

    res = debate.run_debate(3, respond, gsm8k, EXS, rounds=1, stances=[None, None, "adversarial"])
    # round 2 prompt of agent 1 for item a: its own answer, then agents 2 and 3's answers
    chat = agents[0].history[1]["chats"][0]
    assert chat[-2] == {"role": "assistant", "content": "#### 4"}
    assert "Agent 1: #### 5" in chat[-1]["content"] and "Agent 2: #### 4" in chat[-1]["content"]
    # the critic has the adversarial system prompt
    assert "critical study partner" in agents[2].history[0]["chats"][0][0]["content"]
    assert [len(r.turns) for r in res] == [6, 6]
    # last round item a: 4, 5, 5 -> 5; item b: 6, 1, 2 -> tie, earliest agent -> 6
    assert [r.final_key for r in res] == ["5", "6"]


def test_debate_bad_input_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from saie_lite.cli import app

    binary = tmp_path / "q.txt"
    binary.write_bytes(b"What is 2+2?\n\xd0\xff\x00\x01")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    agents = ["--agents", "scripted:a,scripted:b", "--live", "plain"]
    cases = [
        (["--file", binary], f"question file {binary} is not UTF-8 text (bad byte at offset 13)"),
        (["--file", empty], f"question file {empty} has no questions: give one per line"),
        (["-q", "  "], "--question is empty: give a question, or leave it out to type them"),
        (["-q", "x", "--stance", "abc:adversarial"], "--stance takes 'adversarial' or "
         "'N:adversarial' (N in 1..2), got 'abc:adversarial'"),
        (["-q", "x", "--stance", "0:adversarial"], "--stance names agent 0; agents are "
         "numbered 1..2"),
        (["-q", "x", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1 and "
         "--temperature >= 0"),
        (["-q", "x", "--temperature", "-2"], "--max-new-tokens must be >= 1 and "
         "--temperature >= 0"),
    ]  # fmt: skip
    for args, line in cases:
        r = CliRunner().invoke(app, ["debate", *map(str, args), *agents])
        assert r.exit_code == 2, (args, r.output)
        assert r.output.strip().startswith(f"error: {line}"), (args, r.output)
        assert r.output.count("\n") == 1
    r = CliRunner().invoke(app, ["debate", "-q", "x", "--agents", "scripted:a", "--live", "x"])
    assert r.exit_code == 2 and r.output.strip() == "error: --live: auto | rich | plain, got 'x'"
