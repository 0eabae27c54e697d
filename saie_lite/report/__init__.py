"""``saie-lite report``: one self-contained HTML page of a run, an evaluation or an
ablation, to open, mail or attach. Imports nothing."""
