"""``serve``'s settings from flags and environment: each bad value refused naming what to fix.

The parser is the one ``cosyvoice-sidecar serve`` builds, and the environment a
plain mapping, so every row is what a user typing the flag or setting the
variable in a manifest would get.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sidecar.config import Config, ConfigError, add_serve_arguments, config_from_args


def _config(argv: list[str], env: dict[str, str] | None = None) -> Config:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_serve_arguments(parser)
    return config_from_args(parser.parse_args(["--emulator", *argv]), env or {})


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, False),
        (["--readiness-follows-upstream"], {}, True),  # the bare flag, as the README writes it
        (["--readiness-follows-upstream=false"], {}, False),
        (["--readiness-follows-upstream=yes"], {}, True),
        ([], {"COSYVOICE_SIDECAR_READINESS_FOLLOWS_UPSTREAM": "true"}, True),
        ([], {"COSYVOICE_SIDECAR_READINESS_FOLLOWS_UPSTREAM": "0"}, False),
        # A flag wins over the variable.
        (
            ["--readiness-follows-upstream"],
            {"COSYVOICE_SIDECAR_READINESS_FOLLOWS_UPSTREAM": "0"},
            True,
        ),
    ],
)
def test_a_yes_no_setting_is_a_switch_and_a_variable(
    argv: list[str], env: dict[str, str], expected: bool
) -> None:
    """Bare flag on, =false off; the variable takes 1/true/yes/on and 0/false/no/off."""
    assert _config(argv, env).readiness_follows_upstream is expected


def test_values_from_the_environment_are_parsed_by_type() -> None:
    """int, float, choice and pool settings from COSYVOICE_SIDECAR_* variables."""
    config = _config(
        [],
        {
            "COSYVOICE_SIDECAR_MAX_STREAMS": "12",
            "COSYVOICE_SIDECAR_STALL_TIMEOUT_S": "2.5",
            "COSYVOICE_SIDECAR_DEFAULT_FORMAT": "mp3",
            "COSYVOICE_SIDECAR_POOL_MAX_SIZE": "7",
        },
    )
    assert (config.max_streams, config.stall_timeout_s) == (12, 2.5)
    assert (config.default_format, config.pool.max_size) == ("mp3", 7)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--connect-timeout=0"], {}, '"connect_timeout_s" must be > 0'),
        (["--stall-timeout=nan"], {}, '"stall_timeout_s" must be > 0'),
        (["--upstream-url=https://example.com"], {}, '"upstream_url" must start with ws'),
        (["--upstream-url=ws://127.0.0.1:1", "--workspace=a b"], {}, '"workspace" must be'),
        (["--workspace=a/b"], {}, '"workspace" must be'),
        (["--max-streams=0"], {}, '"max_streams" must be >= 1'),
        (["--tls-cert=/tmp/cert.pem"], {}, '"tls_cert" and "tls_key" must be given together'),
        (["--tls-client-ca=/tmp/ca.pem"], {}, '"tls_client_ca" (mTLS) needs'),
        (["--caller-read-timeout=60"], {}, '"caller_read_timeout_s" must be below'),
        (["--fleet-quota=3"], {}, "--fleet-quota need --fleet-redis-url"),
        (["--fleet-redis-url=redis://127.0.0.1:6379"], {}, "needs --fleet-quota"),
        ([], {"COSYVOICE_SIDECAR_REGION": "mars"}, "region must be one of"),
        ([], {"COSYVOICE_SIDECAR_MAX_STREAMS": "many"}, "MAX_STREAMS='many' is not a valid"),
        ([], {"COSYVOICE_SIDECAR_READINESS_FOLLOWS_UPSTREAM": "maybe"}, "is not a valid"),
        ([], {"COSYVOICE_SIDECAR_LOG_LEVEL": "loud"}, "COSYVOICE_SIDECAR_LOG_LEVEL must be one of"),
        ([], {"COSYVOICE_SIDECAR_DEFAULT_FORMAT": "flac"}, "DEFAULT_FORMAT must be one of"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    """The message names the setting (as flag, variable or field) and what it must be."""
    with pytest.raises(ConfigError) as refused:
        _config(argv, env)
    assert message in str(refused.value)


def test_secret_files_that_cannot_be_used_are_refused(tmp_path: Path) -> None:
    """A key file that is missing or empty, and a fleet URL given twice, are start-up errors
    (never a sidecar running without the key the operator meant to give it)."""
    missing = tmp_path / "absent"
    with pytest.raises(ConfigError, match="DASHSCOPE_API_KEY_FILE: cannot read"):
        _config([], {"DASHSCOPE_API_KEY_FILE": str(missing)})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"DASHSCOPE_API_KEY_FILE: .* is empty"):
        _config([], {"DASHSCOPE_API_KEY_FILE": str(empty)})
    url = tmp_path / "redis-url"
    url.write_text("redis://:pw@127.0.0.1:6379/0\n")
    env = {"COSYVOICE_SIDECAR_FLEET_REDIS_URL_FILE": str(url)}
    with pytest.raises(ConfigError, match="give the fleet's Redis URL once") as twice:
        _config(["--fleet-redis-url=redis://127.0.0.1:6379", "--fleet-quota=2"], env)
    assert "pw" not in str(twice.value)
    assert _config(["--fleet-quota=2"], env).fleet is not None


@pytest.mark.parametrize(
    ("field", "value"), [("log_level", "loud"), ("log_format", "xml"), ("default_sample_rate", 1)]
)
def test_config_built_in_code_checks_its_choices_too(field: str, value: object) -> None:
    """Choices the parser already enforces are checked again by Config itself (it is also
    built directly, by the tests and the bench)."""
    with pytest.raises(ConfigError, match=f'"{field}" must be one of'):
        Config(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flag", "field"), [("--default-voice", "voice"), ("--default-model", "model")]
)
def test_a_default_id_every_call_would_fail_on_is_refused_at_start(flag: str, field: str) -> None:
    """A default voice or model no request could use is a start-up error naming the setting,
    not a running sidecar that answers every call INVALID_ARGUMENT blaming the caller."""
    with pytest.raises(ConfigError, match=f'"default_{field}" must be'):
        _config([f"{flag}=bad {field}"])


@pytest.mark.parametrize(
    ("value", "emulator"), [("1", True), ("yes", True), ("off", False), ("", False)]
)
def test_the_emulator_variable_reads_like_every_yes_no_variable(value: str, emulator: bool) -> None:
    """COSYVOICE_SIDECAR_EMULATOR takes the same words; a typo is refused, not read as no."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_serve_arguments(parser)
    env = {"COSYVOICE_SIDECAR_EMULATOR": value, "DASHSCOPE_API_KEY": "sk-test"}
    assert config_from_args(parser.parse_args([]), env).emulator is emulator
    with pytest.raises(ConfigError, match="COSYVOICE_SIDECAR_EMULATOR='treu' is not a valid"):
        config_from_args(parser.parse_args([]), env | {"COSYVOICE_SIDECAR_EMULATOR": "treu"})
