"""The HTTP partner trusts only the server it was given: a redirect is not followed (the
key never reaches another host), the timeout bounds a whole reply, a reply's size is
capped, a reply that is not JSON is named, a key in the URL is refused unshown, and a
server's error text cannot drive the terminal. Loopback servers from fault_server."""

import time

import pytest
from fault_server import FaultServer
from test_openai_http import partner_for  # the partner the other HTTP tests build
from typer.testing import CliRunner

from saie_lite import config
from saie_lite.backends.openai_http import served_model
from saie_lite.errors import PartnerError, UserError

CHAT = [{"role": "user", "content": "Remark on: 2+2=5"}]
SECRET = "sk-test-trust-only-this-server-7731"


def _second_host() -> str:
    """Another origin for a redirect to point at: 127.0.0.2 where the loopback takes it
    (Linux), else 127.0.0.1 on another port (a different origin too)."""
    import socket

    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "127.0.0.1"


@pytest.fixture
def elsewhere():
    s = FaultServer(default="ok:A remark from the wrong host.", host=_second_host())
    yield s
    s.close()


def _redirect_line(url, code, where):
    return (
        f"partner server {url} answered HTTP {code}, a redirect to {where}, which is not "
        "followed (the request and its API key go only to partner.url): if the server now "
        "lives there, point partner.url at it"
    )


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_host_is_not_followed_and_the_key_stays(
    server, elsewhere, monkeypatch, code
):
    monkeypatch.setenv("SAIE_TEST_KEY", SECRET)
    p, _ = partner_for(server.url, **{"partner.api_key_env": "SAIE_TEST_KEY"})
    # the address pointed at carries a user, a password and a token: none is shown
    target = elsewhere.url.replace("://", "://bob:hunter2@") + "/chat/completions?sig=abc123"
    server.actions.append(f"redirect:{code}:{target}")
    with pytest.raises(PartnerError) as e:
        p.remark([CHAT], 8)
    assert str(e.value) == _redirect_line(server.url, code, f"{elsewhere.url}/chat/completions")
    assert len(server.requests) == 1  # not retried: the next attempt would be sent away too
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    # the other host saw nothing: no key, no bodiless GET whose reply is trained on
    assert elsewhere.requests == [] and elsewhere.get_requests == []


def test_a_redirect_on_the_same_server_is_not_followed_either(server):
    p, _ = partner_for(server.url)
    server.actions.append("redirect:308:/v2/chat/completions")
    with pytest.raises(PartnerError) as e:
        p.remark([CHAT], 8)
    where = f"http://127.0.0.1:{server.port}/v2/chat/completions"
    assert str(e.value) == _redirect_line(server.url, 308, where)
    assert len(server.requests) == 1 and server.get_requests == []


def test_the_model_list_is_not_fetched_from_a_redirect(server, elsewhere, monkeypatch):
    monkeypatch.setenv("SAIE_TEST_KEY", SECRET)
    _, cfg = partner_for(
        server.url, **{"partner.model": "embedded", "partner.api_key_env": "SAIE_TEST_KEY"}
    )
    server.get_actions.append(f"redirect:302:{elsewhere.url}/models")
    with pytest.raises(UserError) as e:
        served_model(cfg.partner, print)
    assert str(e.value) == _redirect_line(server.url, 302, f"{elsewhere.url}/models")
    assert elsewhere.get_requests == []


@pytest.mark.parametrize("kind", ["trickle", "tricklehead"])
def test_the_timeout_bounds_a_whole_trickled_reply(server, kind):
    # a byte every 0.25 s for 4 s: each read is quick, the reply is not
    p, _ = partner_for(server.url, **{"partner.timeout": 1.0, "partner.retries": 0})
    server.actions.append(f"{kind}:0.25:16")
    t0 = time.perf_counter()
    with pytest.raises(PartnerError) as e:
        p.remark([CHAT], 8)
    took = time.perf_counter() - t0
    assert str(e.value) == (
        f"partner server {server.url} failed after 1 attempts (timed out: no whole reply "
        "within partner.timeout=1 s)"
    )
    assert 0.9 < took < 2.5


def test_a_trickle_within_the_timeout_is_read_whole(server):
    p, _ = partner_for(server.url, **{"partner.timeout": 2.0, "partner.retries": 0})
    server.actions.append("trickle:0.05:4")
    assert p.remark([CHAT], 8) == ["A trickled remark."]


@pytest.mark.parametrize("kind", ["huge", "hugenolength"])
def test_a_reply_over_the_size_cap_is_not_read(server, kind):
    p, _ = partner_for(server.url, **{"partner.max_reply_mb": 0.5})
    server.actions.append(f"{kind}:2")
    with pytest.raises(PartnerError) as e:
        p.remark([CHAT], 8)
    assert str(e.value) == (
        f"partner server {server.url} sent a reply over 0.5 MB, which is not read: raise "
        "partner.max_reply_mb if its replies are meant to be that long"
    )
    assert len(server.requests) == 1


def test_a_reply_under_the_cap_is_read(server):
    p, _ = partner_for(server.url, **{"partner.max_reply_mb": 1})
    server.actions.append("huge:0.5")
    (remark,) = p.remark([CHAT], 8)
    assert remark == "a" * 2**19


@pytest.mark.parametrize(
    "kind, says",
    [
        (
            "sse",
            "sent an event stream (text/event-stream), not one JSON reply (saie-lite asks for "
            "stream: false): set stream off on the server or proxy",
        ),
        (
            "gzip",
            "sent a compressed reply (Content-Encoding: gzip), which is not decoded (saie-lite "
            "asks for Accept-Encoding: identity): turn compression off on the server or the "
            "proxy in front of it",
        ),
        (
            "br",
            "sent a compressed reply (Content-Encoding: br), which is not decoded (saie-lite "
            "asks for Accept-Encoding: identity): turn compression off on the server or the "
            "proxy in front of it",
        ),
        (
            "html",
            "sent a web page (text/html), not a chat completion: point partner.url at the "
            "server's OpenAI-compatible API (it usually ends in /v1)",
        ),
    ],
)
def test_a_reply_that_is_not_json_says_what_arrived(server, kind, says):
    p, _ = partner_for(server.url)
    server.actions.append(kind)
    with pytest.raises(PartnerError) as e:
        p.remark([CHAT], 8)
    assert str(e.value) == f"partner server {server.url} {says}"
    assert len(server.requests) == 1  # the server's setup: asking again gets the same
    body = server.requests[0]
    assert body["body"]["stream"] is False
    assert body["headers"]["Accept-Encoding"] == "identity"


def test_a_web_page_for_the_model_list_says_what_arrived(server):
    _, cfg = partner_for(server.url, **{"partner.model": "embedded"})
    server.get_actions.append("html")
    with pytest.raises(UserError) as e:
        served_model(cfg.partner, print)
    assert str(e.value) == (
        f"partner server {server.url} sent a web page (text/html), not a chat completion: "
        "point partner.url at the server's OpenAI-compatible API (it usually ends in /v1)"
    )


def test_an_error_body_cannot_drive_the_terminal(server):
    p, _ = partner_for(server.url)
    server.actions.append("400:\x1b]0;pwned\x07 bad\r\nrequest\x9b")
    with pytest.raises(PartnerError) as e:
        p.remark([CHAT], 8)
    line = str(e.value)
    assert "\x1b" not in line and "\x07" not in line and "\x9b" not in line and "\n" not in line
    assert line.endswith("learner.max_seq_len): \\x1b]0;pwned\\x07 bad\\x0d request\\x9b")


def test_a_long_error_body_is_cut(server):
    p, _ = partner_for(server.url)
    server.actions.append("404:" + "x" * 5000)
    with pytest.raises(PartnerError) as e:
        p.remark([CHAT], 8)
    assert str(e.value).endswith(": " + "x" * 200 + "...")


runner = CliRunner()
HINT = " and name the key's variable with partner.api_key_env"


@pytest.mark.parametrize(
    "key, url",
    [
        ("partner.url", "http://user:{s}@127.0.0.1:{port}/v1"),
        ("partner.url", "http://{s}@127.0.0.1:{port}/v1"),
        # an invalid port: the line saying so must not echo the key either
        ("partner.url", "http://u:{s}@127.0.0.1:port{port}/v1"),
        ("learner.vllm_url", "http://u:{s}@127.0.0.1:{port}/v1"),
    ],
)
def test_a_key_in_the_url_is_refused_unshown_and_unsaved(server, tmp_path, monkeypatch, key, url):
    from saie_lite.cli import app

    home = tmp_path / "home"
    monkeypatch.setenv("SAIE_LITE_HOME", str(home))
    url = url.format(s=SECRET, port=server.port)
    recipe = tmp_path / "r.yaml"
    section, name = key.split(".")
    recipe.write_text(f"{section}:\n  {name}: '{url}'\n")
    common = ["train", "--backend", "scripted", "--partner", "openai", "--limit", "4"]
    if key == "learner.vllm_url":
        common += ["--partner-url", server.url]
    for how in (["--set", f"{key}={url}"], ["--recipe", str(recipe)]):
        r = runner.invoke(app, [*common, "--run-dir", str(tmp_path / "run"), *how])
        assert r.exit_code == 2, r.output
        assert r.output.strip() == (
            f"error: config: {key} must not hold a user name or key (http://user:KEY@host): "
            f"give the URL without it{HINT if key == 'partner.url' else ''}; the value given "
            "is not shown or saved"
        )
        assert SECRET not in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()
    for f in home.rglob("*") if home.exists() else []:
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    assert server.requests == [] and server.get_requests == []


def test_max_reply_mb_is_range_checked():
    for bad in ("0", "-1", "2048"):
        with pytest.raises(UserError) as e:
            config.build(overrides={"partner.max_reply_mb": bad})
        assert str(e.value) == "config: partner.max_reply_mb must be in (0, 1024]"
    assert config.build().partner.max_reply_mb == 16
