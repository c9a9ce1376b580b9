"""config.py: loading and validating the TOML file, environment overrides, where paths point."""

from __future__ import annotations

from pathlib import Path

import pytest

from postroom.config import find_config, load_settings
from postroom.errors import ConfigError
from sites import BASE_CONFIG, REPO, merged, toml_text

GOOD = """\
[site]
title = "Blog"
base_url = "https://blog.example.org/"
timezone = "Europe/Berlin"

[site.author]
name = "Ahmed"

[feeds]
entries = 5
"""


def write(tmp_path: Path, text: str, name: str = "postroom.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=env or {})
    message = str(caught.value)
    assert "Traceback" not in message
    return message


def test_example_config_loads() -> None:
    settings = load_settings(REPO / "config.example.toml", env={})
    assert settings.site.title == "Ahmed's notes"
    assert settings.site.base_url == "https://blog.example.org"
    assert settings.site.timezone == "Europe/Berlin"
    assert settings.site.host == "blog.example.org"
    assert settings.feeds.formats == ("atom", "rss", "json")
    assert settings.posts_dir == REPO / "posts"
    assert settings.output_dir == REPO / "public"


def test_defaults_and_trailing_slash(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), env={})
    assert settings.site.base_url == "https://blog.example.org"
    assert settings.feeds_url == "https://blog.example.org"
    assert settings.feeds.entries == 5
    assert (settings.feeds.content, settings.feeds.per_tag) == ("full", True)
    assert settings.site.post_url == "{base_url}/posts/{slug}/"


def test_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "site", GOOD + '\n[paths]\nposts = "content/posts"\noutput = "../www"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(Path("../site/postroom.toml"), env={})
    assert settings.posts_dir.resolve() == tmp_path / "site" / "content" / "posts"
    assert settings.output_dir.resolve() == tmp_path / "www"
    assert settings.templates_dir.resolve() == tmp_path / "site" / "templates"


def test_absolute_paths_stay(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + f'\n[paths]\nposts = "{tmp_path / "p"}"\n')
    assert load_settings(path, env={}).posts_dir == tmp_path / "p"


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + 'colour = "red"\n')
    assert config_error(path) == f"{path}:11: feeds.colour: unknown key"


def test_unknown_key_in_a_nested_table(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('name = "Ahmed"\n', 'name = "Ahmed"\nmail = "a@b"\n'))
    assert config_error(path) == f"{path}:8: site.author.mail: unknown key"


def test_wrong_type_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("entries = 5", 'entries = "5"'))
    message = config_error(path)
    assert message.startswith(f"{path}:10: feeds.entries: ")
    assert "integer" in message


@pytest.mark.parametrize(
    ("replacement", "message"),
    [("per_tag = 1", "boolean"), ('formats = ["atom", "pdf"]', "'atom', 'rss' or 'json'"),
     ("entries = 0", "greater than or equal to 1"), ('content = "excerpt"', "'full' or 'summary'")],
)
def test_more_wrong_values(tmp_path: Path, replacement: str, message: str) -> None:
    path = write(tmp_path, GOOD.replace("entries = 5", replacement))
    key = replacement.split(" ")[0]
    error = config_error(path)
    assert error.startswith(f"{path}:10: feeds.{key}")
    assert message in error


@pytest.mark.parametrize("url", ["blog.example.org", "ftp://blog.example.org", "https://", "/x"])
def test_bad_url_names_file_line_and_key(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, GOOD.replace('"https://blog.example.org/"', f'"{url}"'))
    assert config_error(path) == (
        f"{path}:3: site.base_url: {url!r} is not an absolute http(s) URL"
    )


def test_bad_feeds_url(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + 'url = "feeds.example.org"\n')
    assert config_error(path).startswith(f"{path}:11: feeds.url: 'feeds.example.org' is not")


def test_bad_time_zone_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("Europe/Berlin", "Mars/Olympus_Mons"))
    assert config_error(path) == (
        f"{path}:4: site.timezone: 'Mars/Olympus_Mons' is not a known time zone "
        "(e.g. 'Europe/Berlin')"
    )


def test_bad_post_url_placeholder(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('timezone = "Europe/Berlin"\n',
                                        'post_url = "{base_url}/{category}/{slug}/"\n'))
    message = config_error(path)
    assert message.startswith(f"{path}:4: site.post_url: unknown placeholder {{category}}")


def test_bad_language(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('timezone = "Europe/Berlin"', 'language = "English"'))
    assert config_error(path).startswith(f"{path}:4: site.language: 'English' is not a language")


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('title = "Blog"\n', ""))
    assert f"{path}" in config_error(path)
    assert "site.title: required key is missing" in config_error(path)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("Europe/Berlin", "Nowhere/Land").replace("entries = 5", "entries = -1")
    lines = config_error(write(tmp_path, text)).splitlines()
    assert len(lines) == 2
    assert "site.timezone" in lines[0] and "feeds.entries" in lines[1]


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "entries = = 3\n")
    message = config_error(path)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 11" in message


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert config_error(missing) == f"{missing}: config file not found"


def test_env_overrides(tmp_path: Path) -> None:
    env = {
        "POSTROOM__FEEDS__ENTRIES": "50",
        "POSTROOM__FEEDS__FORMATS": '["atom", "json"]',
        "POSTROOM__FEEDS__PER_TAG": "false",
        "POSTROOM__SITE__TITLE": "Another title",  # not TOML: taken as text
        "POSTROOM__SITE__AUTHOR__EMAIL": "a@example.org",
        "POSTROOM_UNRELATED": "ignored",
    }
    settings = load_settings(write(tmp_path, GOOD), env=env)
    assert settings.feeds.entries == 50
    assert settings.feeds.formats == ("atom", "json")
    assert settings.feeds.per_tag is False
    assert settings.site.title == "Another title"
    assert settings.site.author.email == "a@example.org"
    assert settings.site.author.name == "Ahmed"


def test_env_override_of_a_path_is_relative_to_the_config(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), env={"POSTROOM__PATHS__OUTPUT": "www"})
    assert settings.output_dir.resolve() == tmp_path / "www"


def test_bad_env_override_is_an_error(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, GOOD), env={"POSTROOM__FEEDS__ENTRIES": "lots"})
    assert "feeds.entries" in message
    message = config_error(write(tmp_path, GOOD), env={"POSTROOM__FEEDS__COLOUR": "red"})
    assert "feeds.colour: unknown key" in message


def test_malformed_env_override(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, GOOD), env={"POSTROOM__FEEDS____ENTRIES": "3"})
    assert message.startswith("POSTROOM__FEEDS____ENTRIES: malformed override")


def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    explicit, from_env = Path("a.toml"), tmp_path / "b.toml"
    assert find_config(None, {}) is None
    write(tmp_path, GOOD)  # ./postroom.toml
    assert find_config(None, {}) == Path("postroom.toml")
    assert find_config(None, {"POSTROOM_CONFIG": str(from_env)}) == from_env
    assert find_config(explicit, {"POSTROOM_CONFIG": str(from_env)}) == explicit


def test_embedded_defaults_work_without_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, env={})
    assert settings.site.base_url.startswith("http")
    assert settings.posts_dir == tmp_path / "posts"


def test_base_config_of_the_tests_is_valid(tmp_path: Path) -> None:
    path = write(tmp_path, toml_text(merged(BASE_CONFIG, {"feeds": {"entries": 7}})))
    settings = load_settings(path, env={})
    assert (settings.site.title, settings.feeds.entries) == ("Test blog", 7)


def test_a_bad_override_names_the_variable_not_the_file(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, GOOD), env={"POSTROOM__FEEDS__ENTRIES": "lots"})
    assert message.startswith("POSTROOM__FEEDS__ENTRIES: feeds.entries:")
    assert "postroom.toml" not in message


def test_overrides_never_leak_into_the_embedded_defaults() -> None:
    first = load_settings(None, env={"POSTROOM__SITE__AUTHOR__NAME": "Somebody Else"})
    assert first.site.author.name == "Somebody Else"
    assert load_settings(None, env={}).site.author.name == "postroom"


def test_mail_addresses_are_checked(tmp_path: Path) -> None:
    text = GOOD + '\n[mail]\nfrom_address = "newsletter at example"\nreply_to = "a@b"\n'
    message = config_error(write(tmp_path, text))
    assert "mail.from_address: 'newsletter at example' is not a valid email address" in message
    assert "mail.reply_to" in message


def test_smtp_needs_an_explicit_sender(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, GOOD + '\n[mail]\ntransport = "smtp"\n'))
    assert 'mail.from_address must be set when mail.transport is "smtp"' in message
    text = GOOD + '\n[mail]\ntransport = "smtp"\nfrom_address = "News@Blog.Example.ORG"\n'
    assert load_settings(write(tmp_path, text), env={}).mail.from_address == \
        "news@blog.example.org"


def test_the_confirmation_cooldown_is_the_confirmation_window_unless_set_shorter(
        tmp_path: Path) -> None:
    web = load_settings(write(tmp_path, GOOD), env={}).web
    assert web.confirm_cooldown_seconds is None
    assert web.confirm_cooldown == 7 * 86400
    shorter = write(tmp_path, GOOD + "\n[web]\nconfirm_cooldown_seconds = 3600\n", "short.toml")
    assert load_settings(shorter, env={}).web.confirm_cooldown == 3600
    longer = write(tmp_path, GOOD + "\n[web]\nconfirm_expiry_days = 1\n"
                   "confirm_cooldown_seconds = 90000\n", "long.toml")
    assert config_error(longer) == (
        f"{longer}: web: confirm_cooldown_seconds (90000) is longer than the confirmation "
        "window (confirm_expiry_days = 1, 86400 s): a reader whose link expired could not "
        "get a new one")


def test_database_give_up_after_defaults_to_two_minutes(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, GOOD), env={}).database.give_up_after == 120.0
    quick = write(tmp_path, GOOD + "\n[database]\ngive_up_after = 1\n", "quick.toml")
    assert load_settings(quick, env={}).database.give_up_after == 1.0
