import pytest

from saie_lite import config
from saie_lite.errors import UserError


def test_defaults_validate_and_mode_sets_stances():
    cfg = config.build()
    assert cfg.method.stances == ["supportive", "adversarial"]
    cfg = config.build(overrides={"method.mode": "saie-adversarial"})
    assert cfg.method.stances == ["adversarial"]
    assert config.build(overrides={"method.mode": "sft"}).method.stances == []


def test_recipe_then_cli_override(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("train:\n  lr: 0.001\n  batch_size: 2\nmethod:\n  rounds: 3\n")
    cfg = config.build(r, {"train.batch_size": "8", "method.rounds": None})
    assert cfg.train.lr == 0.001 and cfg.train.batch_size == 8 and cfg.method.rounds == 3


def test_unknown_key_lists_valid_keys(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError) as e:
        config.build(r)
    assert str(e.value) == (
        f"config: unknown key train.learning_rate (in {r}); valid keys: lr, weight_decay, "
        "batch_size, micro_batch_size, grad_clip, seed, save_every, keep_checkpoints, max_steps, "
        "share_prefix, overlap, lookahead, report_to"
    )


def test_unknown_section(tmp_path):
    with pytest.raises(
        UserError, match="unknown section 'trainer'.*valid sections: learner, partner"
    ):
        config.build(overrides={"trainer.lr": 1})


def test_bad_yaml_names_line(tmp_path):
    r = tmp_path / "bad.yaml"
    r.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(UserError, match=r"is not valid YAML at line \d+: fix the syntax"):
        config.build(r)


@pytest.mark.parametrize(
    "text, key, first, second",
    [
        # a repeated section would silently drop the first one's keys (lr here)
        ("train:\n  lr: 0.001\nmethod:\n  rounds: 2\ntrain:\n  batch_size: 2\n", "train", 1, 5),
        ("train:\n  lr: 0.001\n  batch_size: 2\n  lr: 0.1\n", "lr", 2, 4),
        ("learner:\n  model: a\ntrain: {lr: 1, seed: 2, lr: 3}\n", "lr", 3, 3),
    ],
)
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, text, key, first, second):
    r = tmp_path / "r.yaml"
    r.write_text(text)
    with pytest.raises(UserError) as e:
        config.build(r)
    assert str(e.value) == (
        f"recipe {r}: {key!r} is given twice, at line {first} and line {second} "
        "(the second would silently replace the first): keep one"
    )


def test_a_merge_key_may_be_overridden(tmp_path):
    # `<<: *base` then a key of its own: YAML's way to override, not a repeat
    r = tmp_path / "r.yaml"
    r.write_text("train:\n  <<: &base {lr: 0.001, seed: 7}\n  lr: 0.01\n")
    cfg = config.build(r)
    assert cfg.train.lr == 0.01 and cfg.train.seed == 7


def test_an_unsafe_tag_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where os.system would have touched its file
    r = tmp_path / "r.yaml"
    r.write_text("train:\n  lr: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(UserError) as e:
        config.build(r)
    assert str(e.value) == (
        f"recipe {r} line 2: the tag !!python/object/apply:os.system is not allowed (a recipe "
        "holds plain values; tags like !!python/... would run code): remove it"
    )
    assert not (tmp_path / "pwned").exists()


def test_type_and_range_checks():
    with pytest.raises(UserError, match="config: train.batch_size expects an integer, got 'two'"):
        config.build(overrides={"train.batch_size": "two"})
    with pytest.raises(UserError, match=r"method.warmup_fraction must be in \[0, 1\)"):
        config.build(overrides={"method.warmup_fraction": 1.5})
    with pytest.raises(UserError, match="method.mode: sft | saie"):
        config.build(overrides={"method.mode": "debate"})


@pytest.mark.parametrize(
    "text, line",
    [
        ("train:\n  lr: [1]\n", "config: train.lr expects a number, got [1]"),
        ("train:\n  lr:\n", "config: train.lr expects a number, got None"),
        ("train:\n  lr: {a: 1}\n", "config: train.lr expects a number, got {'a': 1}"),
        ("train:\n  lr: true\n", "config: train.lr expects a number, got True"),
        ("train:\n  lr: .inf\n", "config: train.lr expects a finite number, got inf"),
        ("train:\n  batch_size: [2]\n", "config: train.batch_size expects an integer, got [2]"),
        ("1: 2\n", "config: unknown section 1"),
        ("learner:\n  lora_alpha: -3\n", "config: learner.lora_alpha must be >= 1"),
        ("run:\n  live: fancy\n", "config: run.live: auto | rich | plain | quiet, got 'fancy'"),
    ],
)
def test_recipe_values_of_the_wrong_kind_are_one_line(tmp_path, text, line):
    r = tmp_path / "r.yaml"
    r.write_text(text)
    with pytest.raises(UserError) as e:
        config.build(r)
    assert str(e.value).startswith(line)


@pytest.mark.parametrize(
    "url, why",
    [
        ("notaurl", "is not an http(s) URL"),
        ("ftp://x/v1", "is not an http(s) URL"),
        ("http://", "is not an http(s) URL"),
        ("http://[::1", "is not a valid URL (Invalid IPv6 URL)"),
        ("http://h:99999/v1", "is not a valid URL (Port out of range"),
    ],
)
def test_server_urls_are_checked_with_the_config(url, why):
    for key in ("partner.url", "learner.vllm_url"):
        with pytest.raises(UserError) as e:
            config.build(overrides={key: url})
        assert str(e.value).startswith(f"config: {key} {url!r} {why}")
    assert config.build(overrides={"partner.url": "https://h:8080/v1"}).partner.url


def test_parse_sets():
    assert config.parse_sets(["train.lr=1e-3", "learner.model=a=b"]) == {
        "train.lr": "1e-3",
        "learner.model": "a=b",
    }
    with pytest.raises(UserError, match="--set expects section.key=value"):
        config.parse_sets(["lr=1"])


def test_save_roundtrip(tmp_path):
    cfg = config.build(overrides={"train.lr": 0.5, "method.mode": "saie-support"})
    config.save(cfg, tmp_path / "c.yaml")
    again = config.build(base=config.load_yaml(tmp_path / "c.yaml"))
    assert again == cfg


def test_every_field_has_help():
    import dataclasses

    for section in dataclasses.fields(config.Config):
        for f in dataclasses.fields(section.default_factory()):
            assert f.metadata.get("help"), f"{section.name}.{f.name} lacks help"
