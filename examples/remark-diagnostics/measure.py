"""Partner prompts, before and after, measured with the remark diagnostics on the same
learner answers (issue 14).

    python examples/remark-diagnostics/measure.py --n 16 --out answers.json

1. The embedded model (llama.cpp, greedy) answers N held-out bundled GSM8K problems with
   the learner's prompt; the answers are saved (``--out``) and reused on later runs.
2. The embedded partner remarks on every answer in both stances, once with the prompts
   of ``before.json`` (the wording saie-lite shipped before, kept next to this script)
   and once with the current ``saie_lite.train.prompts``.
3. Echo, on-stance and degenerate rates per stance are printed for both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from saie_lite import config
from saie_lite.registry import factory
from saie_lite.remarks import rates, rates_line
from saie_lite.tasks import example_chat, gsm8k
from saie_lite.train import prompts
from saie_lite.train.batch import is_degenerate, remark_diagnostics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("answers.json"))
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--show", type=int, default=4, help="print the first N remarks")
    ap.add_argument("--only", choices=["before", "after"], help="measure one wording only")
    args = ap.parse_args()
    cfg = config.build(overrides={"partner.model": "embedded", "partner.n_ctx": 2048})
    partner = factory("partners", "llama_cpp")(cfg)
    exs = gsm8k.load("bundled", "dev")[0][: args.n]
    if args.out.is_file():
        answers = json.loads(args.out.read_text())[: args.n]
        exs = exs[: len(answers)]
    else:
        answers = partner.generate([example_chat(gsm8k, x) for x in exs], 128, 0.0)
        args.out.write_text(json.dumps(answers, indent=1))
    before = json.loads((Path(__file__).parent / "before.json").read_text())
    now = (prompts.PARTNER_SYSTEM, dict(prompts.STANCE_INSTRUCTION))
    only = [args.only] if args.only else ["before", "after"]
    for label, (system, stances) in (
        ("before", (before["system"], before["stances"])),
        ("after", now),
    ):
        if label not in only:
            continue
        prompts.PARTNER_SYSTEM, prompts.STANCE_INSTRUCTION = system, stances
        chats, keys = [], []
        for x, a in zip(exs, answers):
            for stance in ("supportive", "adversarial"):
                chat = prompts.partner_chat(x, [a], stance, cfg.method.partner_sees_reference)
                chats.append(chat)
                keys.append((x, a, stance))
        remarks = partner.remark(chats, args.max_tokens)
        diags = [(st, remark_diagnostics(gsm8k, r, a, st)) for (x, a, st), r in zip(keys, remarks)]
        r = rates(diags)
        same = sum(remarks[i] == remarks[i + 1] for i in range(0, len(remarks), 2))
        print(f"{label}: {rates_line(r)}")
        print(
            f"  all n={r['all']['n']} echo {100 * r['all']['echo']:.0f}% on-stance "
            f"{100 * r['all']['on_stance']:.0f}% degenerate {sum(map(is_degenerate, remarks))}; "
            f"identical supportive/adversarial pairs {same}/{len(exs)}"
        )
        for (x, _a, st), rem, (_, d) in list(zip(keys, remarks, diags))[: args.show]:
            print(f"  [{x.id} {st}] {rem[:200]!r} {d}", flush=True)
    prompts.PARTNER_SYSTEM, prompts.STANCE_INSTRUCTION = now


if __name__ == "__main__":
    main()
