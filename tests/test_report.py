"""``saie-lite report``: one self-contained HTML page of a run, an evaluation or an
ablation, opened in a real headless browser (Debian's ``chromium``).

The data holds HTML that would run or fetch something if it reached the page as markup
(a ``<script>``, an ``<img onerror>``): the browser's DOM must hold it as text only, and
every discussion and item must be there. ``logs show EVAL_DIR`` prints an evaluation's
items in the terminal, as written."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saie_lite.cli import app
from saie_lite.store import Store

runner = CliRunner()
HTML = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
TERMINAL = "\x1b]0;pwned\x07"
CHROMIUM = shutil.which("chromium")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install chromium): the report's browser "
    "checks need a real browser",
)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def browser(tmp_path: Path, url: str, *flags: str) -> str:
    """Chromium, headless, on ``url``: its stdout (the DOM with --dump-dom)."""
    profile = tmp_path / f"chromium-{len(list(tmp_path.glob('chromium-*')))}"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", *flags, url,
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


class Elements(HTMLParser):
    """Every element of a DOM dump as (tag, attributes), and the text of a few."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.texts: dict[str, str] = {}
        self._open: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.elements.append((tag, a))
        self._open = a.get("id") or tag

    def handle_endtag(self, tag):
        self._open = None

    def handle_data(self, data):
        if self._open in ("shown", "title"):
            self.texts[self._open] = self.texts.get(self._open, "") + data

    def all(self, tag: str, cls: str | None = None) -> list[dict]:
        return [
            a for t, a in self.elements
            if t == tag and (cls is None or cls in (a.get("class") or "").split())
        ]  # fmt: skip


def dry_run(run: Path, limit: int = 6, *extra) -> str:
    r = invoke("train", "--dry-run", "--limit", limit, "--live", "plain", "--run-dir", run, *extra)
    assert r.exit_code == 0, r.output
    return r.output


def add_injected_discussion(run: Path) -> None:
    """One more discussion in the run's store, every field holding the payloads: the
    question (inside its opening chat), the answer, both remarks and the target."""
    evil = f"{HTML} {TERMINAL}"
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": f"Q {evil}"}]
    base = {"step": 2, "phase": "discussion", "round": 1, "example_id": f"id {evil}"}
    diag = {"echo_rouge": 0.1, "echo": False, "on_stance": True, "stance_by": "words",
            "degenerate": False}  # fmt: skip
    rows = [
        {**base, "turn": 0, "role": "learner", "prompt": chat, "text": f"A {evil}", "correct": 1},
        {**base, "turn": 1, "role": "partner", "stance": "supportive", "prompt": chat,
         "text": f"remark {evil}", "diagnostics": diag},
        {**base, "turn": 1, "role": "partner", "stance": "adversarial", "prompt": chat,
         "text": f"remark {evil}", "diagnostics": diag},
        {**base, "turn": 1, "role": "target", "stance": "adversarial", "prompt": chat,
         "text": f"target {evil}"},
    ]  # fmt: skip
    store = Store(run / "saie.sqlite")
    try:
        store.add_turns(rows)
    finally:
        store.close()


def discussion_count(run: Path, where: str) -> int:
    """Discussions in the store whose first answer matches ``where``, counted without the
    report's code (a discussion: one example in one update)."""
    db = sqlite3.connect(run / "saie.sqlite")
    try:
        return db.execute(
            "SELECT COUNT(DISTINCT step || '/' || example_id) FROM turns t WHERE t.turn = 0"
            f" AND t.role = 'learner' AND {where}"
        ).fetchone()[0]
    finally:
        db.close()


def all_discussions(run: Path) -> int:
    db = sqlite3.connect(run / "saie.sqlite")
    try:
        return db.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT step, example_id FROM turns)"
        ).fetchone()[0]
    finally:
        db.close()


def assert_no_injected_element(dom: Elements, raw: str) -> None:
    """The payloads are in the page as text, and made no element."""
    assert dom.all("img", None) == [] or all(
        a.get("src", "").startswith("data:image/png;base64,") for a in dom.all("img")
    ), "an <img> from the data became an element"
    assert not [a for t, a in dom.elements for k in a if k.startswith("on")], "an on* handler"
    assert len(dom.all("script")) == 1  # the report's own filter script, nothing else
    assert dom.texts.get("title", "") != "pwned"
    assert "&lt;img src=x onerror=" in raw and "&lt;script&gt;document.title" in raw
    assert "\\x1b]0;pwned\\x07" in raw  # the terminal escape is shown, written out


# -- a run --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def injected_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    dry_run(run)
    add_injected_discussion(run)
    r = invoke("report", run)
    assert r.exit_code == 0, r.output
    assert r.output == f"wrote {run / 'report.html'}\n"
    return run


@needs_browser
def test_run_report_shows_every_discussion_and_no_injected_element(injected_run, tmp_path):
    page = injected_run / "report.html"
    raw = browser(tmp_path, page.as_uri(), "--dump-dom")
    dom = Elements(raw)
    n = all_discussions(injected_run)
    assert n == 7  # 1 warm-up example, 2 updates of discussions, and the injected one
    items = dom.all("article", "item")
    assert len(items) == n
    assert dom.texts["shown"] == f"{n} of {n} shown"
    assert_no_injected_element(dom, raw)
    # the charts are in the page, drawn: loss, time split, remark diagnostics
    assert len(dom.all("svg")) == 3 and dom.all("polyline") and dom.all("rect")


@needs_browser
def test_run_report_filters_by_mark_stance_and_update_from_the_address(injected_run, tmp_path):
    page = injected_run / "report.html"
    right = discussion_count(injected_run, "t.correct = 1")
    assert right == 1  # the scripted learner is always wrong: only the injected one is right
    n = all_discussions(injected_run)
    dom = Elements(browser(tmp_path, page.as_uri() + "#mark=right", "--dump-dom"))
    shown = [a for a in dom.all("article", "item") if "hidden" not in a]
    assert len(shown) == right and dom.texts["shown"] == f"{right} of {n} shown"
    # one stance: only discussions with it, and inside them only its branch
    dom = Elements(
        browser(tmp_path, page.as_uri() + "#stance=adversarial&from=3&to=3", "--dump-dom")
    )
    shown = [a for a in dom.all("article", "item") if "hidden" not in a]
    assert {a["data-step"] for a in shown} == {"3"} and shown
    visible_branches = [a for a in dom.all("div", "branch") if "hidden" not in a]
    assert visible_branches and {a["data-stance"] for a in visible_branches} == {"adversarial"}
    # free text: the search finds the injected discussion by its (escaped) text
    dom = Elements(browser(tmp_path, page.as_uri() + "#q=onerror", "--dump-dom"))
    assert len([a for a in dom.all("article", "item") if "hidden" not in a]) == 1


@needs_browser
def test_run_report_screenshot_is_not_blank(injected_run, tmp_path):
    import matplotlib.image

    shot = tmp_path / "shot.png"
    browser(tmp_path, (injected_run / "report.html").as_uri(), f"--screenshot={shot}",
            "--window-size=1200,2000")  # fmt: skip
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    colours = {tuple(p) for p in pixels[::7, ::7, :3].reshape(-1, 3).round(2).tolist()}
    assert pixels.std() > 0.02 and len(colours) > 20  # text, charts and badges, not one colour


def test_run_report_needs_no_network_and_escapes_without_a_browser(injected_run):
    """What the page is, read as text: nothing it would fetch, the data as text."""
    raw = (injected_run / "report.html").read_text()
    assert "Content-Security-Policy" in raw and "default-src 'none'" in raw
    for fetched in ("http://", "https://", 'src="//', "@import"):
        assert fetched not in raw.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert raw.count("<script>") == 1 and "<img" not in raw
    assert "&lt;img src=x onerror=&quot;document.title=&#x27;pwned&#x27;&quot;&gt;" in raw


def test_train_prints_the_report_command_and_it_works(tmp_path):
    run = tmp_path / "run"
    out = dry_run(run, 4).splitlines()
    line = next(x for x in out if "see it in one HTML page:" in x)
    command = line.split(": ", 1)[1].split()
    assert command == ["saie-lite", "report", str(run)]
    r = invoke(*command[1:], "--out", tmp_path / "shared" / "run.html")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "shared" / "run.html").read_text().startswith("<!DOCTYPE html>")
    assert not (run / "report.html").exists()  # --out chose the file


# -- an evaluation -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def injected_eval(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("report-eval")
    data = where / "qa.jsonl"
    rows = [
        {"question": f"Q1 {HTML} {TERMINAL}", "answer": f"zero {HTML}\n#### 0"},
        {"question": "Q2 plain", "answer": "five\n#### 5"},
        {"question": "Q3 plain", "answer": "seven\n#### 7"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = where / "eval"
    r = invoke("eval", "--backend", "scripted", "--task", "gsm8k", "--data", data,
               "--split", "all", "--out", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


@needs_browser
def test_eval_report_shows_metrics_and_every_item_and_no_injected_element(injected_eval, tmp_path):
    r = invoke("report", injected_eval)
    assert r.exit_code == 0 and r.output == f"wrote {injected_eval / 'report.html'}\n"
    raw = browser(tmp_path, (injected_eval / "report.html").as_uri() + "#mark=right", "--dump-dom")
    dom = Elements(raw)
    items = dom.all("article", "item")
    assert len(items) == 3
    # the scripted learner answers 0: the first item is right, and only it is shown
    assert [a["data-mark"] for a in items] == ["right", "wrong", "wrong"]
    assert [("hidden" in a) for a in items] == [False, True, True]
    assert "33.3%" in raw and "95% interval" in raw  # accuracy 1/3 with its interval
    assert_no_injected_element(dom, raw)


def test_logs_show_prints_an_evaluations_items_as_written(injected_eval):
    r = invoke("logs", "show", injected_eval)
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"evaluation {injected_eval}: n=3, accuracy 33.3%")
    assert "item 1 (" in r.output and "): RIGHT" in r.output and r.output.count("WRONG") == 2
    assert f"question: Q1 {HTML} \\x1b]0;pwned\\x07" in r.output  # written out, inert
    assert "\x1b" not in r.output
    assert "reference: 0" in r.output and "reference: 5" in r.output
    r = invoke("logs", "show", injected_eval.parent / "missing")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "neither a debate" in r.output


# -- an ablation ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ablation(tmp_path_factory) -> Path:
    from saie_lite import config
    from saie_lite.evaluate.ablation import run_ablation
    from saie_lite.ui.ablate_view import PlainAblateView

    out = tmp_path_factory.mktemp("report-ablation") / "exp"
    sets = {
        "learner.backend": "scripted", "partner.backend": "scripted", "data.limit": 6,
        "data.split": "nodev", "ablate.eval_limit": 3, "train.batch_size": 2,
        "method.warmup_fraction": 0.2, "eval.batch_size": 3, "ablate.systems": "base,sft,saie",
        "ablate.strategies": "single",  # one table: the rows counted below
    }  # fmt: skip
    res = run_ablation(config.build(overrides=sets), out, PlainAblateView(io.StringIO()))
    assert res["status"] == "finished"
    return out


@needs_browser
def test_ablation_report_has_table_plot_and_links_to_each_systems_report(ablation, tmp_path):
    target = tmp_path / "shared" / "ablation.html"
    r = invoke("report", ablation, "--out", target)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1] == f"wrote {target}"
    written = [Path(line.removeprefix("wrote ")) for line in r.output.splitlines()]
    assert sorted(p.relative_to(ablation).as_posix() for p in written[:-1]) == [
        "evals/base/report.html", "evals/saie/report.html", "evals/sft/report.html",
        "runs/saie/report.html", "runs/sft/report.html",
    ]  # fmt: skip
    dom = Elements(browser(tmp_path, target.as_uri(), "--dump-dom"))
    links = [a["href"] for a in dom.all("a")]
    assert len(links) == 5
    for href in links:  # relative, and each opens a page that exists
        assert not href.startswith(("/", "file:")) and (target.parent / href).resolve().is_file()
    (plot,) = dom.all("img", "plot")
    assert plot["src"].startswith("data:image/png;base64,")
    rows = [t for t, _ in dom.elements if t == "tr"]
    assert len(rows) == 4  # the header and base, sft, saie


def test_what_is_not_a_report_folder_is_one_line(tmp_path, ablation, injected_eval):
    for folder, words in (
        (tmp_path, "is not a run, an evaluation or an ablation"),
        (tmp_path / "none", "is not a directory"),
    ):
        r = invoke("report", folder)
        assert r.exit_code == 2 and r.output.count("\n") == 1 and words in r.output, r.output
    half = tmp_path / "half"  # an ablation not finished: its runs and evals, no results
    (half / "runs").mkdir(parents=True)
    (half / "evals").mkdir()
    r = invoke("report", half)
    assert r.exit_code == 2 and "not finished (the same ablate command continues it)" in r.output
    r = invoke("report", ablation, "--out", tmp_path)
    assert r.exit_code == 2 and "is a directory: give a file name" in r.output
    moved = tmp_path / "moved"  # a summary without the database of its items
    moved.mkdir()
    shutil.copy(injected_eval / "summary.json", moved)
    for args in (("report", moved), ("logs", "show", moved)):
        r = invoke(*args)
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert "are not in its saie.sqlite nor its run's" in r.output
