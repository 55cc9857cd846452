"""The one configuration object: environment, flags, defaults, and safe printing."""

from __future__ import annotations

from pathlib import Path

import pytest

from porten.config import ConfigError, Settings, default_data_dir, redact_url


def test_defaults_use_the_per_user_data_dir_and_embedded_postgres() -> None:
    """With no environment, data lives in the XDG data dir and Postgres is embedded."""
    s = Settings.from_env({})
    assert s.data_dir == default_data_dir()
    assert s.embedded
    assert s.pgdata == default_data_dir() / "postgres"


def test_environment_then_flags_win() -> None:
    """PORTEN_* variables override defaults, and non-None flags override variables."""
    env = {
        "PORTEN_DATA_DIR": "/srv/porten",
        "PORTEN_PORT": "9000",
        "PORTEN_DATABASE_URL": "postgresql://db/porten",
    }
    s = Settings.from_env(env, port=None, data_dir="/tmp/elsewhere")
    assert s.port == 9000
    assert s.data_dir == Path("/tmp/elsewhere")
    assert s.database_url == "postgresql://db/porten"
    assert not s.embedded


@pytest.mark.parametrize(
    ("name", "value"), [("PORTEN_PORT", "eighty"), ("PORTEN_LOG_FORMAT", "xml")]
)
def test_a_bad_setting_names_the_variable(name: str, value: str) -> None:
    """A value porten cannot use is refused with the variable's name in the message."""
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://porten:s3cret@db:5432/porten", "postgresql://porten:***@db:5432/porten"),
        ("postgresql://porten@db/porten", "postgresql://porten@db/porten"),
        ("postgresql:///porten?host=/run/pg", "postgresql:///porten?host=/run/pg"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    """A database URL printed in a log or an error never contains its password."""
    assert redact_url(url) == shown
