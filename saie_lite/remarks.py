"""Text overlap (ROUGE-L) and the remark diagnostics: is the partner useful at all?

For every partner remark the run records how much of it repeats the learner's answer
(ROUGE-L F1 of remark against answer), whether it keeps to its stance (a supportive
remark agrees, an adversarial one disputes) and whether it is degenerate. The rates per
stance are shown live, in the run's summary and by ``saie-lite logs``; when most remarks
echo the answer or ignore their stance, one line says the partner is too weak.

Core module: ``rouge_score`` is imported inside the function that needs it.
"""

from __future__ import annotations

import re
from functools import lru_cache

# A remark whose ROUGE-L F1 against the answer reaches this repeats it (the answer's
# words, in order, make up most of the remark): it tells the learner nothing new.
ECHO_THRESHOLD = 0.5
# The weak-partner line: said once, after at least this many remarks, when the share of
# echoes or of off-stance remarks (over both stances) passes the limit.
WARN_AFTER = 8
WARN_ECHO = 0.5
WARN_OFF_STANCE = 0.5
STRONGER_PARTNER = (
    "use a larger partner, e.g. --partner-model ~/models/qwen2.5-1.5b-instruct-q4_k_m.gguf, "
    "or a server: --partner openai --partner-url URL --partner-model NAME"
)

# Words that dispute an answer; a remark that states no final answer is read by these.
DISPUTE = re.compile(
    r"\b(wrong|incorrect|not correct|not right|mistake|mistaken|error|errors|erroneous|"
    r"flaw|flawed|mis\w+|doubt|are you sure|double[- ]check|re-?check|recalculate|"
    r"reconsider|revise|however|should be|shouldn't|isn't|is not|doesn't|does not|"
    r"can't be|cannot be|disagree|challenge|objection|question whether|overlook\w*|forgot|"
    r"missed|miss)\b",
    re.IGNORECASE,
)


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (rouge-score's tokenizer: lower-cased alphanumeric words)."""
    return float(_scorer().score(reference or "", prediction or "")["rougeL"].fmeasure)


def disputes(text: str) -> bool:
    return DISPUTE.search(text or "") is not None


def diagnose(
    remark: str,
    answer: str,
    stance: str,
    degenerate: bool,
    remark_final: str | None = None,
    answer_final: str | None = None,
) -> dict:
    """One remark's diagnostics.

    ``remark_final`` is the final answer the remark states ("#### N", "the answer is N",
    read by the task's strict rule), ``answer_final`` the learner's (None where the data
    has no check). A remark disputes the answer when it states another final answer, or
    when its words dispute (wrong, mistake, are you sure, recheck...): a supportive remark
    is on its stance when it does not dispute, an adversarial one when it does. Restating
    the learner's own answer while calling it wrong still disputes. A degenerate remark is
    never on its stance.
    """
    echo = rouge_l(remark, answer)
    if degenerate:
        on, how = False, "degenerate"
    else:
        other = remark_final is not None and answer_final is not None
        other = other and remark_final != answer_final
        d = other or disputes(remark)
        on = not d if stance == "supportive" else d
        how = "answer" if other else "words"
    return {
        "echo_rouge": round(echo, 4),
        "echo": echo >= ECHO_THRESHOLD,
        "on_stance": bool(on),
        "stance_by": how,
        "degenerate": bool(degenerate),
    }


def rates(diags: list[tuple[str, dict]]) -> dict:
    """``[(stance, diagnostics), ...]`` -> per stance and overall: n, echo rate, mean
    echo ROUGE-L, on-stance rate, degenerate rate."""
    groups: dict[str, list[dict]] = {}
    for stance, d in diags:
        if d:
            groups.setdefault(stance, []).append(d)
            groups.setdefault("all", []).append(d)
    out = {}
    for k, ds in groups.items():
        n = len(ds)
        out[k] = {
            "n": n,
            "echo": sum(d["echo"] for d in ds) / n,
            "echo_rouge": sum(d["echo_rouge"] for d in ds) / n,
            "on_stance": sum(d["on_stance"] for d in ds) / n,
            "degenerate": sum(d["degenerate"] for d in ds) / n,
        }
    return out


def rates_line(r: dict) -> str:
    """'supportive n=8 echo 12% on-stance 88% degenerate 0% | adversarial ...'."""
    parts = []
    for stance in ("supportive", "adversarial", "rationale"):
        if stance in r:
            s = r[stance]
            parts.append(
                f"{stance} n={s['n']} echo {100 * s['echo']:.0f}% on-stance "
                f"{100 * s['on_stance']:.0f}% degenerate {100 * s['degenerate']:.0f}%"
            )
    return " | ".join(parts)


def weak_partner(r: dict) -> str | None:
    """The one-line warning, or None while the partner looks usable (or too few remarks
    have been seen to tell): most remarks echo the answer, or most remarks (overall, or
    of one stance) ignore their stance."""
    a = r.get("all")
    if not a or a["n"] < WARN_AFTER:
        return None
    off = {k: 1 - v["on_stance"] for k, v in r.items() if v["n"] >= WARN_AFTER // 2}
    worst = max(off, key=lambda k: off[k])
    if a["echo"] <= WARN_ECHO and off[worst] <= WARN_OFF_STANCE:
        return None
    where = "" if worst == "all" else f" {worst}"
    return (
        f"the partner looks too weak for the discussion to mean much: "
        f"{100 * a['echo']:.0f}% of its remarks echo the answer, "
        f"{100 * off[worst]:.0f}% of its{where} remarks ignore their stance; "
        f"{STRONGER_PARTNER}"
    )
