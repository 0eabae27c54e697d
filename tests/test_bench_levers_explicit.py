"""The bench switches speed levers through the backends' own door (``levers``, declared as
``TunableLevers``), never by setting attributes on a loaded learner or partner: the door
restores every lever on exit, and bench/ has no assignment to a backend's attributes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from saie_lite import config
from saie_lite.protocols import TunableLevers, capabilities, supports

ROOT = Path(__file__).resolve().parents[1]
# Names a learner, partner or agent goes by in the bench (and the core).
BACKEND_NAMES = {"learner", "partner", "agent", "agents", "inner", "a", "first", "p"}


def _chain(node: ast.expr) -> list[str]:
    """``self.inner.cfg.train`` -> ['self', 'inner', 'cfg', 'train'] ([] for other roots)."""
    names = []
    while isinstance(node, ast.Attribute | ast.Subscript):
        if isinstance(node, ast.Attribute):
            names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return []
    return [node.id, *reversed(names)]


def _sets_backend(target: ast.expr) -> bool:
    """Whether assigning to ``target`` sets an attribute of a backend-like object or of
    something it holds (its ``cfg``): the object assigned on is, or is reached from, a
    backend name or ``self.<backend name>``; not ``cfg.learner`` (a config section)."""
    if isinstance(target, ast.Tuple | ast.List):
        return any(_sets_backend(t) for t in target.elts)
    return isinstance(target, ast.Attribute) and _is_backend(_chain(target.value))


def _is_backend(chain: list[str]) -> bool:
    if chain[:1] == ["self"]:  # self.inner, self.learner: what a wrapper holds
        chain = chain[1:]
    return bool(chain) and chain[0] in BACKEND_NAMES


def assignments(source: str) -> list[str]:
    """Assignments (plain, augmented, annotated, ``setattr``) to a backend's attributes or
    its ``cfg``, except a wrapper's ``__setattr__`` forwarding to what it wraps."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        if any(_sets_backend(t) for t in targets):
            found.append(f"{node.lineno}: {ast.unparse(node).splitlines()[0]}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "setattr"
            and node.args
            and _is_backend(_chain(node.args[0]))
            and function != "__setattr__"
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(source), "")
    return found


def test_bench_sets_no_attribute_of_a_learner_or_partner():
    bad = []
    for path in sorted((ROOT / "saie_lite" / "bench").glob("*.py")):
        bad += [f"{path.relative_to(ROOT)}:{a}" for a in assignments(path.read_text())]
    assert bad == []


def test_the_assignment_finder_catches_each_kind():
    source = (
        "def f(learner, partner, agents, cfg, s):\n"
        "    learner.split_head, learner.plan_micro_batches = None, False\n"
        "    learner.cfg.train.share_prefix = True\n"
        "    partner.parallel = 1\n"
        "    learner.step += 1\n"
        "    agents[0].answer_end = None\n"
        "    setattr(learner, 'train_step', s)\n"
        "    cfg.learner.max_seq_len = 1024\n"  # a config the bench built: allowed
        "    s.learner.x = 1\n"  # a section named learner: allowed
        "    s.batch = 2\n"  # not a backend: allowed
        "    learner = s\n"  # rebinding the name, not an attribute: allowed
        "class W:\n"
        "    def __init__(self, inner):\n"
        "        self.inner = inner\n"  # the wrapper's own attribute: allowed
        "    def __setattr__(self, name, value):\n"
        "        setattr(self.inner, name, value)\n"  # forwarding: allowed
        "    def g(self):\n"
        "        self.inner.blockwise_attention = False\n"
    )
    assert [a.split(":")[0] for a in assignments(source)] == ["2", "3", "4", "5", "6", "7", "18"]


def _learner(tiny_model_dir, **over):
    from saie_lite.backends.torch_peft import TorchLearner

    return TorchLearner(
        config.build(
            overrides={
                "learner.model": str(tiny_model_dir),
                "learner.backend": "torch",
                "learner.max_seq_len": 256,
                **over,
            }
        )
    )


def test_learner_levers_switch_for_the_block_and_restore_on_exit(tiny_model_dir):
    pytest.importorskip("torch")
    from saie_lite.bench.parts import switched
    from saie_lite.tasks import gsm8k

    learner = _learner(tiny_model_dir)
    assert supports(learner, TunableLevers) and "TunableLevers" in capabilities(learner)
    start = learner.current_levers()
    assert start.split_head and start.plan_micro_batches and start.max_seq_len == 256
    head = learner.split_head
    with switched(learner, split_head=False, plan_micro_batches=False, max_seq_len=512) as on:
        assert learner.split_head is None and not learner.plan_micro_batches
        assert learner.cfg.learner.max_seq_len == 512
        assert on == learner.current_levers() and not on.split_head
        with switched(learner, answer_end=gsm8k.answer_end, share_prefix=False):
            assert learner.answer_end is gsm8k.answer_end
            assert not learner.cfg.train.share_prefix
        assert learner.current_levers() == on  # the inner block's levers are back
    assert learner.current_levers() == start
    assert learner.split_head is head  # the same head, not a rebuilt one
    # restored when the block fails too
    with pytest.raises(RuntimeError), switched(learner, stop_on_device=False):
        raise RuntimeError("measurement failed")
    assert learner.stop_on_device
    # a lever the learner lacks is refused, and nothing is switched
    with pytest.raises(TypeError, match="no such learner lever: parallel"):
        with learner.levers(parallel=1, plan_micro_batches=False):
            pass
    assert learner.current_levers() == start


def test_switched_refuses_a_backend_without_levers():
    from saie_lite.backends.scripted import ScriptedLearner
    from saie_lite.bench.parts import switched

    assert not supports(ScriptedLearner(), TunableLevers)
    with pytest.raises(TypeError, match="ScriptedLearner has no speed levers"):
        switched(ScriptedLearner(), plan_micro_batches=False)


def test_partner_levers_switch_for_the_block_and_restore_on_exit():
    pytest.importorskip("llama_cpp")
    from saie_lite.backends.llama_cpp import LlamaCppPartner
    from saie_lite.bench.parts import switched

    partner = LlamaCppPartner(config.build(overrides={"partner.parallel": 4}))
    assert supports(partner, TunableLevers)
    with switched(partner, parallel=1, reuse_prefix=False) as on:
        assert (partner.parallel, partner.reuse_prefix) == (1, False)
        assert (on.parallel, on.reuse_prefix) == (1, False)
    assert (partner.parallel, partner.reuse_prefix) == (4, True)
    # the packing lever reaches the batched decoder: one prompt-reading call per prompt
    # with it off, one for both with it on (then one call per new token after the first)
    prompts = [[{"role": "user", "content": f"Say {w}."}] for w in ("yes", "no")]
    partner.remark(prompts, 1)  # builds the decoder
    decoder = partner._batched[0]
    calls = []
    decode = decoder._decode
    decoder._decode = lambda entries: (calls.append(len(entries)), decode(entries))
    with switched(partner, pack_prompts=False):
        partner.remark(prompts, 1)
        assert decoder.pack_prompts is False and len(calls) == 2
    calls.clear()
    partner.remark(prompts, 1)
    assert decoder.pack_prompts is True and len(calls) == 1
    # and so does the refill lever, off by default
    with switched(partner, refill=True):
        partner.remark(prompts, 1)
        assert decoder.refill is True
    partner.remark(prompts, 1)
    assert decoder.refill is False
    with pytest.raises(TypeError, match="no such partner lever: split_head"):
        with partner.levers(split_head=False):
            pass
    partner.llm.close()


def test_counted_learner_counts_updates_without_replacing_train_step():
    from saie_lite.backends.scripted import ScriptedLearner
    from saie_lite.bench.parts import CountedLearner
    from saie_lite.protocols import TrainSequence

    inner = ScriptedLearner()
    own = type(inner).train_step
    counted = CountedLearner(inner)
    seqs = [TrainSequence([{"role": "user", "content": "2+2?"}], "4")]
    stats = counted.train_step(seqs)
    assert counted.seen == {"tokens": stats.n_tokens, "targets": stats.n_target_tokens}
    assert counted.seen["targets"] > 0
    assert "train_step" not in vars(inner) and type(inner).train_step is own
    counted.seed_step = 3  # what the loop sets lands on the learner it wraps
    assert inner.seed_step == 3 and counted.name == inner.name
