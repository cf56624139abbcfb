"""FleetSettings validates itself and never shows the Redis password."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError
from sidecar.fleet import FleetSettings, redact_url
from sidecar.fleet._settings import redact_text


def test_defaults_are_valid_and_off_by_default_is_the_callers_choice() -> None:
    """Only the URL and the quota are required."""
    settings = FleetSettings(redis_url="redis://127.0.0.1:6379/0", quota=8)
    assert (settings.key, settings.on_redis_down, settings.start_rate) == ("default", "open", None)
    assert settings.renew_interval_s == settings.lease_ttl_s / 3


def test_a_short_lease_ttl_shortens_the_redis_timeout_instead_of_being_refused() -> None:
    """--fleet-lease-ttl has a flag, the Redis timeout has none: a short TTL (down to the
    1 s minimum) is accepted and the timeout shrinks to a twelfth of it, so a failed
    renewal (three timeouts at most) and the next one fit in the TTL."""
    short = FleetSettings(redis_url="redis://127.0.0.1", quota=2, lease_ttl_s=3.0)
    assert short.command_timeout_s == 0.25
    assert short.renew_interval_s + 3 * short.command_timeout_s <= short.lease_ttl_s * 7 / 12
    default = FleetSettings(redis_url="redis://127.0.0.1", quota=2)
    assert default.command_timeout_s == default.redis_timeout_s == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"redis_url": "http://127.0.0.1"}, "redis_url"),
        ({"quota": 0}, "fleet.quota"),
        ({"key": "a{b}"}, "fleet.key"),
        ({"key": ""}, "fleet.key"),
        ({"start_rate": 0.0}, "start_rate"),
        ({"lease_ttl_s": 0.5}, "lease_ttl_s"),
        ({"redis_timeout_s": 0.0}, "redis_timeout_s"),
        ({"on_redis_down": "maybe"}, "on_redis_down"),
        ({"redis_max_connections": 0}, "redis_max_connections"),
    ],
)
def test_invalid_settings_say_what_to_change(overrides: dict[str, object], message: str) -> None:
    """Each bad value is refused with the name of the setting."""
    fields: dict[str, object] = {"redis_url": "redis://127.0.0.1", "quota": 2, **overrides}
    with pytest.raises(ConfigError, match=message):
        FleetSettings(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:pw@host/1", "rediss://user:***@host/1"),
        ("redis://:pw@[::1]:6379", "redis://:***@[::1]:6379"),
        ("redis://host?password=pw&db=2", "redis://host?password=***&db=2"),
        ("redis://host:6379", "redis://host:6379"),
    ],
)
def test_urls_are_redacted(url: str, shown: str) -> None:
    """The password goes, the rest of the URL stays readable."""
    assert redact_url(url) == shown


def test_repr_and_error_text_hide_the_password() -> None:
    """repr shows the redacted URL; error text loses every password of the URL."""
    settings = FleetSettings(redis_url="rediss://u:p%40ss@h:6380/0?password=other", quota=1)
    assert "p%40ss" not in repr(settings)
    assert "p@ss" not in repr(settings)
    assert settings.secrets == ("p@ss", "other")
    assert (
        redact_text("auth p@ss failed, other too", settings.secrets) == "auth *** failed, *** too"
    )
