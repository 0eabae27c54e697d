"""``saie-lite`` with a scripted agent that streams slowly, for the terminal tests in
test_debate_tty.py: a turn long enough to press Ctrl-C in, without a real model.

Run as ``python tests/tty_agents.py debate --agents slow:a ...``."""

from __future__ import annotations

import time

from saie_lite.backends.scripted import ScriptedLearner
from saie_lite.cli import main
from saie_lite.registry import register_learner


class SlowStreamer(ScriptedLearner):
    """Streams one word every 0.2 s for about a minute, then answers 4."""

    def stream(self, chat, max_new_tokens, temperature):
        for i in range(300):
            time.sleep(0.2)
            yield f"step{i} "
        yield "#### 4"


if __name__ == "__main__":
    register_learner("slow", lambda cfg: SlowStreamer())
    main()
