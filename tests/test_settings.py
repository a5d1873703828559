"""lifecycle.settings: defaults, normalisation, and errors that name the variable to fix."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from lifecycle.settings import (
    DeletionPlanSettings,
    ReferenceRule,
    Settings,
    SettingsError,
    get_settings,
)

#: A value that must never appear in an error message.
SECRET = "hunter2-Sup3rSecret-value"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A clean LIFECYCLE_* environment, run from an empty folder."""
    for key in list(os.environ):
        if key.startswith("LIFECYCLE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def _error(env: pytest.MonkeyPatch, **variables: str) -> str:
    for key, value in variables.items():
        env.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        get_settings()
    assert info.value.__cause__ is None and info.value.__suppress_context__
    return str(info.value)


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_live_under_data_dir(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = get_settings()
    data_dir = (tmp_path / ".lifecycle").resolve()
    assert settings.resolved_database_url == f"sqlite:///{data_dir / 'lifecycle.db'}"
    assert settings.resolved_storage_url == (data_dir / "storage").as_uri()
    assert settings.resolved_storage_url.startswith("file:///")
    assert settings.resolved_outbox_dir == data_dir / "outbox"
    assert settings.mail_backend == "outbox"
    assert settings.smtp_password is None and settings.pseudonym_key is None
    assert settings.deletion_plan == DeletionPlanSettings()


def test_data_dir_from_environment(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "elsewhere"))
    settings = get_settings()
    data_dir = tmp_path / "elsewhere"
    assert settings.resolved_database_url == f"sqlite:///{data_dir / 'lifecycle.db'}"
    assert settings.resolved_storage_url == (data_dir / "storage").as_uri()
    assert settings.resolved_outbox_dir == data_dir / "outbox"


def test_default_deletion_plan() -> None:
    plan = DeletionPlanSettings()
    assert plan.prefix_for("abc") == "users/abc/"
    assert {(r.table, r.column, r.action) for r in plan.references} == {
        ("features", "proposed_by", "set_null"),
        ("scoreboard_entries", "user_id", "delete"),
    }


# --- normalisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
def test_postgres_urls_use_psycopg(env: pytest.MonkeyPatch, scheme: str) -> None:
    env.setenv("LIFECYCLE_DATABASE_URL", f"{scheme}://app:pw@db.internal:5432/app?sslmode=require")
    settings = get_settings()
    expected = "postgresql+psycopg://app:pw@db.internal:5432/app?sslmode=require"
    assert settings.database_url == expected
    assert settings.resolved_database_url == expected


def test_sqlite_url_kept(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("LIFECYCLE_DATABASE_URL", f"sqlite:///{tmp_path}/x.db")
    assert get_settings().resolved_database_url == f"sqlite:///{tmp_path}/x.db"


@pytest.mark.parametrize("url", ["s3://bucket", "s3://bucket/some/prefix", "file:///srv/files"])
def test_good_storage_urls(env: pytest.MonkeyPatch, url: str) -> None:
    env.setenv("LIFECYCLE_STORAGE_URL", url)
    assert get_settings().resolved_storage_url == url


def test_smtp_backend_complete(env: pytest.MonkeyPatch) -> None:
    env.setenv("LIFECYCLE_MAIL_BACKEND", "smtp")
    env.setenv("LIFECYCLE_SMTP_HOST", "smtp.example.com")
    env.setenv("LIFECYCLE_MAIL_FROM", "Acme <no-reply@example.com>")
    env.setenv("LIFECYCLE_SMTP_USERNAME", "mailer")
    env.setenv("LIFECYCLE_SMTP_PASSWORD", SECRET)
    settings = get_settings()
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    assert settings.sender == "Acme <no-reply@example.com>"


def test_deletion_plan_from_json(env: pytest.MonkeyPatch) -> None:
    plan = {
        "storage_prefix": "u/{user_id}/",
        "references": [
            {"table": "comments", "column": "author_id", "action": "delete"},
            {"table": "features", "column": "proposed_by", "action": "set_null"},
        ],
    }
    env.setenv("LIFECYCLE_DELETION_PLAN", json.dumps(plan))
    settings = get_settings()
    assert settings.deletion_plan.storage_prefix == "u/{user_id}/"
    assert settings.deletion_plan.prefix_for("42") == "u/42/"
    assert settings.deletion_plan.references == [
        ReferenceRule(table="comments", column="author_id", action="delete"),
        ReferenceRule(table="features", column="proposed_by", action="set_null"),
    ]


def test_deletion_plan_prefix_from_nested_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("LIFECYCLE_DELETION_PLAN__STORAGE_PREFIX", "tenants/{user_id}/")
    plan = get_settings().deletion_plan
    assert plan.storage_prefix == "tenants/{user_id}/"
    assert plan.references == DeletionPlanSettings().references


# --- errors name the variable, never the secret -----------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://app:{SECRET}@db/app",
        f"postgresql+psycopg2://app:{SECRET}@db/app",
        f"app:{SECRET}@db/app",
    ],
)
def test_bad_database_url(env: pytest.MonkeyPatch, url: str) -> None:
    message = _error(env, LIFECYCLE_DATABASE_URL=url)
    assert "LIFECYCLE_DATABASE_URL" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    "url",
    [
        "http://bucket.example.com/prefix",
        "s3://",
        "s3:///prefix-without-bucket",
        "file://relative/path",
        "file:relative/path",
        "relative/path",
    ],
)
def test_bad_storage_url(env: pytest.MonkeyPatch, url: str) -> None:
    message = _error(env, LIFECYCLE_STORAGE_URL=url)
    assert "LIFECYCLE_STORAGE_URL" in message


@pytest.mark.parametrize("url", ["ftp://app.example.com", "app.example.com", "https://"])
def test_bad_app_url(env: pytest.MonkeyPatch, url: str) -> None:
    assert "LIFECYCLE_APP_URL" in _error(env, LIFECYCLE_APP_URL=url)


def test_smtp_needs_host(env: pytest.MonkeyPatch) -> None:
    message = _error(
        env,
        LIFECYCLE_MAIL_BACKEND="smtp",
        LIFECYCLE_MAIL_FROM="no-reply@example.com",
        LIFECYCLE_SMTP_USERNAME="mailer",
        LIFECYCLE_SMTP_PASSWORD=SECRET,
    )
    assert "LIFECYCLE_SMTP_HOST" in message
    assert SECRET not in message


@pytest.mark.parametrize("backend", ["smtp", "ses"])
def test_sending_backends_need_mail_from(env: pytest.MonkeyPatch, backend: str) -> None:
    message = _error(env, LIFECYCLE_MAIL_BACKEND=backend, LIFECYCLE_SMTP_HOST="smtp.example.com")
    assert "LIFECYCLE_MAIL_FROM" in message


def test_smtp_username_needs_password(env: pytest.MonkeyPatch) -> None:
    message = _error(env, LIFECYCLE_SMTP_USERNAME="mailer")
    assert "LIFECYCLE_SMTP_PASSWORD" in message


def test_empty_smtp_password(env: pytest.MonkeyPatch) -> None:
    message = _error(env, LIFECYCLE_SMTP_USERNAME="mailer", LIFECYCLE_SMTP_PASSWORD="")
    assert "LIFECYCLE_SMTP_PASSWORD" in message


def test_short_pseudonym_key(env: pytest.MonkeyPatch) -> None:
    short = "s3cr3t-k3y-15ch"
    assert len(short) == 15
    message = _error(env, LIFECYCLE_PSEUDONYM_KEY=short)
    assert "LIFECYCLE_PSEUDONYM_KEY" in message
    assert short not in message


def test_pseudonym_key_of_16_characters(env: pytest.MonkeyPatch) -> None:
    env.setenv("LIFECYCLE_PSEUDONYM_KEY", "k" * 16)
    key = get_settings().pseudonym_key
    assert key is not None and key.get_secret_value() == "k" * 16


@pytest.mark.parametrize("rate", ["-1", "-0.5", "1000.5", "fast"])
def test_bad_mail_rate(env: pytest.MonkeyPatch, rate: str) -> None:
    assert "LIFECYCLE_MAIL_RATE_PER_SECOND" in _error(env, LIFECYCLE_MAIL_RATE_PER_SECOND=rate)


def test_zero_mail_rate_means_unpaced_outbox(env: pytest.MonkeyPatch) -> None:
    # The model allows 0 (ge=0) only with the local outbox, where nothing leaves the machine.
    env.setenv("LIFECYCLE_MAIL_RATE_PER_SECOND", "0")
    assert get_settings().mail_rate_per_second == 0


@pytest.mark.parametrize("backend", ["smtp", "ses"])
def test_zero_mail_rate_refused_for_real_mail(env: pytest.MonkeyPatch, backend: str) -> None:
    message = _error(
        env,
        LIFECYCLE_MAIL_RATE_PER_SECOND="0",
        LIFECYCLE_MAIL_BACKEND=backend,
        LIFECYCLE_MAIL_FROM="no-reply@example.com",
        LIFECYCLE_SMTP_HOST="smtp.example.com",
    )
    assert "LIFECYCLE_MAIL_RATE_PER_SECOND" in message


@pytest.mark.parametrize(
    "prefix",
    [
        "users/",  # no {user_id}
        "users/{user_id}/{user_id}/",  # twice
        "users/{user_id}",  # no trailing slash
        "users/{user_id}/../other/",
        "../{user_id}/",
        "/users/{user_id}/",
        "users/{user_id}/{other}/",
    ],
)
def test_bad_storage_prefix(env: pytest.MonkeyPatch, prefix: str) -> None:
    message = _error(env, LIFECYCLE_DELETION_PLAN=json.dumps({"storage_prefix": prefix}))
    assert "LIFECYCLE_DELETION_PLAN" in message
    assert "STORAGE_PREFIX" in message


@pytest.mark.parametrize(
    "rule",
    [
        {"table": "features; DROP TABLE users", "column": "proposed_by", "action": "delete"},
        {"table": "features", "column": "proposed_by) OR 1=1 --", "action": "delete"},
        {"table": "features", "column": "proposed_by", "action": "truncate"},
        {"table": "features", "column": "proposed_by"},
    ],
)
def test_bad_reference_rule(env: pytest.MonkeyPatch, rule: dict[str, str]) -> None:
    message = _error(env, LIFECYCLE_DELETION_PLAN=json.dumps({"references": [rule]}))
    assert "LIFECYCLE_DELETION_PLAN__REFERENCES" in message


def test_malformed_deletion_plan_json(env: pytest.MonkeyPatch) -> None:
    message = _error(env, LIFECYCLE_DELETION_PLAN='{"storage_prefix": ')
    assert "LIFECYCLE_DELETION_PLAN" in message


def test_every_problem_is_reported(env: pytest.MonkeyPatch) -> None:
    message = _error(
        env, LIFECYCLE_STORAGE_URL="http://x", LIFECYCLE_APP_URL="nope", LIFECYCLE_SMTP_PORT="0"
    )
    for name in ("LIFECYCLE_STORAGE_URL", "LIFECYCLE_APP_URL", "LIFECYCLE_SMTP_PORT"):
        assert name in message


# --- strict values: no coercion, no unknown keys, nothing checked late --------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LIFECYCLE_INACTIVE_ACCOUNTS", '{"claim_group": true}'),
        ("LIFECYCLE_INACTIVE_ACCOUNTS", '{"claim_group": 20.5}'),
        ("LIFECYCLE_LEASE_SECONDS", "900.5"),
        ("LIFECYCLE_LEASE_SECONDS", "true"),
        ("LIFECYCLE_SMTP_PORT", "587.0.1"),
        ("LIFECYCLE_MAIL_RATE_PER_SECOND", "fast"),
    ],
)
def test_numbers_refuse_booleans_and_fractions(
    env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    assert variable in _error(env, **{variable: value})


@pytest.mark.parametrize(
    "field", ["lease_seconds", "smtp_port", "mail_rate_per_second", "smtp_timeout_seconds"]
)
def test_numbers_refuse_booleans_when_built_directly(field: str) -> None:
    with pytest.raises(ValidationError, match="not true/false"):
        Settings.model_validate({field: True})


@pytest.mark.parametrize(
    ("variable", "value", "unknown"),
    [
        ("LIFECYCLE_DELETION_PLAN", '{"storage_prefx": "u/{user_id}/"}', "STORAGE_PREFX"),
        (
            "LIFECYCLE_DELETION_PLAN",
            '{"references": [{"table": "t", "column": "c", "action": "delete", "on": "x"}]}',
            "ON",
        ),
        ("LIFECYCLE_INACTIVE_ACCOUNTS", '{"claim_groups": 5}', "CLAIM_GROUPS"),
    ],
)
def test_unknown_keys_in_groups_are_refused(
    env: pytest.MonkeyPatch, variable: str, value: str, unknown: str
) -> None:
    message = _error(env, **{variable: value})
    assert unknown in message and "Extra inputs are not permitted" in message


def test_misspelt_variable_is_refused_with_a_suggestion(env: pytest.MonkeyPatch) -> None:
    message = _error(env, LIFECYCLE_MAIL_BACKNED="ses")
    assert "LIFECYCLE_MAIL_BACKNED: not a lifecycle setting" in message
    assert "did you mean LIFECYCLE_MAIL_BACKEND?" in message


def test_test_and_benchmark_variables_are_not_settings(env: pytest.MonkeyPatch) -> None:
    env.setenv("LIFECYCLE_TEST_POSTGRES_URL", "postgresql://x@y/z")
    env.setenv("LIFECYCLE_BENCH_POSTGRES_URL", "postgresql://x@y/z")
    assert get_settings().mail_backend == "outbox"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LIFECYCLE_SES_ENDPOINT_URL", "localhost:4566"),
        ("LIFECYCLE_S3_ENDPOINT_URL", "ftp://minio.internal"),
        ("LIFECYCLE_S3_ENDPOINT_URL", f"http://key:{SECRET}@minio.internal"),
        ("LIFECYCLE_AWS_REGION", "us_east_1"),
        ("LIFECYCLE_AWS_REGION", "Frankfurt"),
        ("LIFECYCLE_STORAGE_URL", "s3://bucket/prefix?versionId=1"),
        ("LIFECYCLE_STORAGE_URL", "file:///srv/files#top"),
        ("LIFECYCLE_PRODUCT_NAME", "Acme\r\nBcc: everyone@example.com"),
        ("LIFECYCLE_MAIL_FROM", "Acme\r\nBcc: x@example.com <no-reply@acme.com>"),
        ("LIFECYCLE_MAIL_FROM", "Acme"),
        ("LIFECYCLE_MAIL_FROM", "a@acme.com, b@acme.com"),
        ("LIFECYCLE_APP_URL", "https://app.example.com/\r\nX: y"),
    ],
)
def test_values_are_checked_when_settings_load(
    env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    message = _error(env, **{variable: value})
    assert variable in message and SECRET not in message


@pytest.mark.parametrize("variable", ["LIFECYCLE_DATA_DIR", "LIFECYCLE_OUTBOX_DIR"])
def test_folders_that_are_files_are_refused(
    env: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    file = tmp_path / "not-a-folder"
    file.write_text("x")
    assert f"{variable}: Value error, {file} is a file" in _error(env, **{variable: str(file)})


# --- TTL purge and abandoned carts ------------------------------------------------------------


TARGET = {
    "name": "sessions",
    "table": "sessions",
    "expiry_column": "expires",
    "expiry_kind": "epoch",
}


def test_targets_from_json(env: pytest.MonkeyPatch) -> None:
    env.setenv("LIFECYCLE_TTL_PURGE__TARGETS", json.dumps([TARGET | {"batch_size": 500}]))
    (target,) = get_settings().ttl_purge.targets
    assert (target.name, target.batch_size, target.strategy) == ("sessions", 500, "auto")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": True}, "BATCH_SIZE: Value error, must be a number"),
        ({"batch_size": 50}, "BATCH_SIZE"),
        ({"batchsize": 500}, "BATCHSIZE: Extra inputs are not permitted"),
        ({"expiry_kind": "seconds"}, "EXPIRY_KIND"),
        ({"table": "sessions; drop table users"}, "TABLE"),
        ({"action": "abandoned-cart"}, "the abandoned-cart action runs on table cart_activity"),
        (
            {"strategy": "index", "orphan_of": {"table": "t", "columns": {"a": "a"}}},
            "walks its blocks",
        ),
    ],
)
def test_bad_targets_name_the_variable(
    env: pytest.MonkeyPatch, change: dict[str, Any], message: str
) -> None:
    text = _error(env, LIFECYCLE_TTL_PURGE__TARGETS=json.dumps([TARGET | change]))
    assert "LIFECYCLE_TTL_PURGE__TARGETS" in text and message in text


def test_duplicate_target_names(env: pytest.MonkeyPatch) -> None:
    text = _error(env, LIFECYCLE_TTL_PURGE__TARGETS=json.dumps([TARGET, TARGET]))
    assert "must be unique" in text


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"LIFECYCLE_TTL_PURGE__LOCK_WAIT_MS": "true"}, "LIFECYCLE_TTL_PURGE__LOCK_WAIT_MS"),
        ({"LIFECYCLE_TTL_PURGE__BLOCK_WALK_ABOVE": "1.5"}, "BLOCK_WALK_ABOVE"),
        ({"LIFECYCLE_TTL_PURGE__VACUUM_AFTER": "5"}, "VACUUM_AFTER: Extra inputs"),
        (
            {"LIFECYCLE_ABANDONED_CARTS__MARKETING_URL": "https://m.example.com/carts"},
            "MARKETING_SECRET is required",
        ),
        (
            {
                "LIFECYCLE_ABANDONED_CARTS__MARKETING_URL": "https://m.example.com/carts",
                "LIFECYCLE_ABANDONED_CARTS__MARKETING_SECRET": "",
            },
            "MARKETING_SECRET must be at least 16",
        ),
        ({"LIFECYCLE_ABANDONED_CARTS__MARKETING_URL": "ftp://m.example.com"}, "MARKETING_URL"),
        ({"LIFECYCLE_ABANDONED_CARTS__MARKETING_URL": "https://m.example.com/c?k=v"}, "query"),
        ({"LIFECYCLE_DYNAMODB_ENDPOINT_URL": "localhost:4566"}, "LIFECYCLE_DYNAMODB_ENDPOINT_URL"),
        (
            {"LIFECYCLE_ABANDONED_CARTS__DYNAMODB_TABLES": '[{"table": "carts", "ttl": "x"}]'},
            "Extra",
        ),
        (
            {
                "LIFECYCLE_TTL_PURGE__TARGETS": json.dumps(
                    [
                        {
                            "name": "carts",
                            "table": "cart_activity",
                            "expiry_column": "expires_at",
                            "expiry_kind": "epoch",
                            "action": "abandoned-cart",
                        }
                    ]
                )
            },
            "MARKETING_URL is required",
        ),
    ],
)
def test_bad_settings_name_the_variable(
    env: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    assert message in _error(env, **variables)


def test_secret_never_in_errors_or_repr(env: pytest.MonkeyPatch) -> None:
    secret = "sixteen-chars-secret-value"
    env.setenv("LIFECYCLE_ABANDONED_CARTS__MARKETING_URL", "https://m.example.com/carts")
    env.setenv("LIFECYCLE_ABANDONED_CARTS__MARKETING_SECRET", secret)
    settings = get_settings()
    assert secret not in repr(settings) and secret not in str(settings.model_dump())
    text = _error(env, LIFECYCLE_ABANDONED_CARTS__REQUEST_TIMEOUT_SECONDS="-1")
    assert secret not in text and "REQUEST_TIMEOUT_SECONDS" in text


# --- consent deletion: processors, contacts, durations ----------------------------------------


def _processors(env: pytest.MonkeyPatch, *processors: dict[str, Any], contacts: bool = True) -> str:
    env.setenv("LIFECYCLE_CONSENT_DELETION__PROCESSORS", json.dumps(list(processors)))
    if contacts:
        env.setenv("LIFECYCLE_CONSENT_DELETION__TECHNICAL_CONTACTS", '["ops@example.com"]')
    try:
        get_settings()
    except SettingsError as exc:
        assert SECRET not in str(exc)
        return str(exc)
    return ""


def test_consent_deletion_defaults(env: pytest.MonkeyPatch) -> None:
    group = get_settings().consent_deletion
    assert group.processors == [] and group.technical_contacts == []
    assert group.alert_repeat_after == timedelta(hours=24)


def test_processors_of_every_kind(env: pytest.MonkeyPatch) -> None:
    assert not _processors(
        env,
        {"kind": "mixpanel", "token": SECRET, "project_token": "p", "region": "eu"},
        {"kind": "segment", "token_block": "segment-token", "escalate_after": "P10D"},
        {"kind": "rest", "name": "acme", "base_url": "https://privacy.acme.test", "token": SECRET},
        {"kind": "rest", "name": "off", "base_url": "https://x.test", "enabled": False},
    )
    group = get_settings().consent_deletion
    assert [p.name for p in group.enabled] == ["mixpanel", "segment", "acme"]
    assert group.processors[1].escalate_after == timedelta(days=10)
    assert group.processors[0].escalate_after == timedelta(days=3)
    assert SECRET not in repr(group) and SECRET not in str(group.model_dump())


@pytest.mark.parametrize(
    ("processor", "problem"),
    [
        ({"kind": "rest", "name": "a", "base_url": "https://a.test"}, "has no token"),
        ({"kind": "rest", "name": "a", "base_url": "https://a.test", "token": ""}, "not be empty"),
        (
            {"kind": "rest", "name": "a", "base_url": "https://a.test", "token": "  "},
            "not be empty",
        ),
        ({"kind": "mixpanel", "token": SECRET}, "needs project_token"),
        (
            {"kind": "mixpanel", "token": SECRET, "project_token": "p", "ids_per_request": 2000},
            "IDS_PER_REQUEST",
        ),
        ({"kind": "segment", "token": SECRET, "rate_per_second": 11}, "RATE_PER_SECOND"),
        (
            {"kind": "segment", "token": SECRET, "start_path": "/x"},
            "Extra inputs are not permitted",
        ),
        ({"kind": "segment", "token": SECRET, "escalate_after": 3}, "ISO 8601 duration"),
        ({"kind": "segment", "token": SECRET, "escalate_after": "PT10M"}, "ESCALATE_AFTER"),
        ({"kind": "segment", "token": SECRET, "concurrency": True}, "not true/false"),
        (
            {"kind": "rest", "name": "Bad Name", "base_url": "https://a.test", "token": SECRET},
            "NAME",
        ),
        ({"kind": "rest", "name": "a", "base_url": "ftp://a.test", "token": SECRET}, "BASE_URL"),
        (
            {
                "kind": "rest",
                "name": "a",
                "base_url": "https://a.test",
                "token": SECRET,
                "body": {},
            },
            "{user_ids}",
        ),
        ({"kind": "nosuch", "token": SECRET}, "does not match any of the expected tags"),
        ({"kind": "segment", "token": SECRET, "token_block": "b"}, "not both"),
    ],
)
def test_bad_processors_are_refused_by_name(
    env: pytest.MonkeyPatch, processor: dict[str, object], problem: str
) -> None:
    message = _processors(env, processor)
    assert "LIFECYCLE_CONSENT_DELETION__PROCESSORS" in message and problem in message


def test_processor_names_are_unique(env: pytest.MonkeyPatch) -> None:
    segment = {"kind": "segment", "token": SECRET}
    assert "must be unique" in _processors(env, segment, segment)


def test_contacts_are_addresses_and_required_with_a_processor(env: pytest.MonkeyPatch) -> None:
    segment = {"kind": "segment", "token": SECRET}
    assert "TECHNICAL_CONTACTS is required" in _processors(env, segment, contacts=False)
    env.setenv("LIFECYCLE_CONSENT_DELETION__TECHNICAL_CONTACTS", '["ops team"]')
    assert "LIFECYCLE_CONSENT_DELETION__TECHNICAL_CONTACTS" in _error(env)


def test_consent_deletion_json_must_be_valid(env: pytest.MonkeyPatch) -> None:
    message = _error(env, LIFECYCLE_CONSENT_DELETION__PROCESSORS=f'[{{"token": "{SECRET}"')
    assert "LIFECYCLE_CONSENT_DELETION" in message and "not valid JSON" in message
    assert SECRET not in message
