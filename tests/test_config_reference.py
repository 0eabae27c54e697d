"""``saie-lite config`` and docs/config.md read the schema: every key answers, and the
generated page is the schema's current text."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from saie_lite import config as config_mod
from saie_lite import config_reference as ref
from saie_lite.cli import app

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_docs_config_page_is_generated_from_the_schema():
    page = (ROOT / "docs" / "config.md").read_text()
    assert page == ref.markdown(), (
        "docs/config.md is out of date: run `saie-lite config --markdown > docs/config.md`"
    )


def test_every_key_answers_with_its_type_default_and_help():
    every = config_mod.flat(config_mod.Config())
    assert [k.name for k in ref.keys()] == list(every)
    for name, default in every.items():
        r = invoke("config", name)
        assert r.exit_code == 0, r.output
        lines = r.output.splitlines()
        assert lines[0] == name
        assert f"  default: {ref.shown(default)}" in lines
        assert len(lines[-2].strip()) > 3  # the help text


def test_a_section_lists_only_its_keys():
    r = invoke("config", "run")
    assert r.exit_code == 0
    assert "run.live" in r.output and "run.dir" in r.output and "learner." not in r.output


def test_effective_config_marks_what_differs_from_the_default(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 0.001\n")
    r = invoke("config", "train", "--recipe", str(recipe), "--set", "train.seed=7")
    assert r.exit_code == 0, r.output
    lines = {
        line[2:].split()[0]: line for line in r.output.splitlines() if line[:2] in ("* ", "  ")
    }
    assert lines["train.lr"].startswith("* ") and "(default 0.0002)" in lines["train.lr"]
    assert lines["train.seed"].startswith("* ") and "7" in lines["train.seed"]
    assert lines["train.batch_size"].startswith("  ")


def test_unknown_key_is_one_line_with_a_suggestion():
    r = invoke("config", "learner.lora")
    assert r.exit_code == 2
    assert "learner.lora_r" in r.output and len(r.output.strip().splitlines()) == 1


def test_values_far_outside_the_usual_get_one_note_and_still_train(tmp_path):
    """Tried as a new user would: lora_r=1024 and lr=5 trained without a word to a loss of
    44. They stay possible, and each gets one line before training."""
    r = invoke(
        "train", "--dry-run", "--limit", "4", "--live", "plain", "--run-dir", str(tmp_path / "r"),
        "--set", "train.lr=5", "--set", "learner.lora_r=1024",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if "far outside the usual range" in line]
    assert notes == [
        "note: learner.lora_r=1024 is far outside the usual range (1 to 256): training may "
        "diverge or waste memory; kept as asked",
        "note: train.lr=5 is far outside the usual range (1e-06 to 0.01): training may "
        "diverge or waste memory; kept as asked",
    ]
    plain = invoke("train", "--dry-run", "--limit", "4", "--live", "plain",
                   "--run-dir", str(tmp_path / "d"))  # fmt: skip
    assert "far outside" not in plain.output


def test_a_recipe_that_claims_every_key_lists_every_key():
    """A recipe saying it lists every key does; the others say where the full list is."""
    import re

    import yaml

    every = set(config_mod.flat(config_mod.Config()))
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        if recipe.name.startswith("accelerate-"):
            continue  # accelerate's own launch config, not a saie-lite recipe
        text = recipe.read_text()
        header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        if re.search(r"\b(every|all) (the )?keys? (is|are) listed", header, re.I):
            data = yaml.safe_load(text) or {}
            given = {f"{sec}.{k}" for sec, sub in data.items() for k in (sub or {})}
            assert every <= given, f"{recipe.name} lacks {sorted(every - given)}"
        config_mod.build(recipe)  # and every recipe is a valid config
