"""Settings are read once, at the entry point: a bad value is one clear line, and `.env` is read per load."""
from __future__ import annotations

from bot import cli, config


def test_a_bad_value_stops_the_cli_with_one_line_naming_the_setting(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("BOT_QUEUE_MAX", "lots")
    assert cli.main(["settings"]) == 1
    err = capsys.readouterr().err
    assert err == "setting BOT_QUEUE_MAX='lots' is not an integer\n"


def test_dotenv_is_read_once_per_load(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BOT_SEARCH_K", raising=False)
    (tmp_path / ".env").write_text("BOT_SEARCH_K=7\n", encoding="utf-8")
    loaded = config.Settings.load()
    assert loaded.search_k == 7  # the .env in the working directory is honoured
    (tmp_path / ".env").write_text("BOT_SEARCH_K=9\n", encoding="utf-8")
    assert loaded.search_k == 7 and loaded.value("BOT_SEARCH_K") == 7  # the loaded object does not change
    assert config.Settings.load().search_k == 9  # the next start reads it again
    monkeypatch.setenv("BOT_SEARCH_K", "3")
    assert config.Settings.load().search_k == 3  # the environment wins over .env
