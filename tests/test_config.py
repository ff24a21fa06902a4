"""Settings: every one is documented, parsed from the environment, and secret-safe."""

from __future__ import annotations

from pathlib import Path

import pytest

from sse_service.config import Settings, redact_url

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme_table(field: str) -> None:
    name = "APP_API_TOKEN" if field == "app_api_token" else f"SSE_{field.upper()}"
    assert f"| `{name}` |" in README


def test_environment_and_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_KEEPALIVE_SECONDS", "2.5")
    monkeypatch.setenv("SSE_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("BETTER_AUTH_SECRET", "from-better-auth")
    monkeypatch.setenv("APP_API_TOKEN", "")
    settings = Settings()
    assert settings.keepalive_seconds == 2.5
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == "from-better-auth"
    assert settings.app_api_token is None


def test_settings_are_frozen() -> None:
    settings = Settings(jwt_secret="s")
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]


def test_none_is_never_an_algorithm() -> None:
    with pytest.raises(ValueError, match="never 'none'"):
        Settings(jwt_secret="s", jwt_algorithms="HS256,none")


def test_redis_password_is_redacted() -> None:
    settings = Settings(redis_url="rediss://app:hunter2@redis.internal:6380/1")
    assert settings.redis_url_for_logs == "rediss://app:***@redis.internal:6380/1"
    assert "hunter2" not in repr(settings)
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"
