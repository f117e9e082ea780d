"""System checks on observability's settings: ``MONITORING_TOKEN``, ``SENTRY_ALERTS`` and
``ALERT_RULES`` (against the rules and settings :mod:`~resilience_crm.observability.rules`
defines), and Sentry alerts asked for without sentry-sdk (the ``[sentry]`` extra)."""

from __future__ import annotations

import importlib.util
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage

from resilience_crm.checks import (
    CHECKS,
    Check,
    is_number,
    listing,
    setting_path,
    settings_check,
    table,
    type_name,
)
from resilience_crm.observability.rules import DEFAULT_RULES

MESSAGES = table({
    "SENTRY_ALERTS_INVALID": Check(
        "resilience_crm.E016",
        "{path} must be True or False, not {value!r}.",
        None,
    ),
    "MONITORING_ACCESS_INVALID": Check(
        "resilience_crm.E018",
        "{path} must be None or a non-empty string, not {value!r}.",
        (
            'Set it from the environment, e.g. os.environ.get("RESILIENCE_MONITORING_TOKEN"), and '
            'send it as "Authorization: Bearer <token>".'
        ),
    ),
    "ALERT_RULES_INVALID": Check(
        "resilience_crm.E019",
        "{path} {error}.",
        'Example: {{"failure_rate": {{"threshold": 0.2}}, "flapping": None}}. Rules: {valid}.',
    ),
    "SENTRY_WITHOUT_SDK": Check(
        "resilience_crm.W060",
        "{path} is True but sentry-sdk is not installed: alerts are only logged.",
        (
            'pip install "django-resilience-crm[sentry]" and call sentry_sdk.init() in your '
            "settings, or leave SENTRY_ALERTS unset."
        ), warning=True,
    ),
})


@settings_check()
def check_observability(config: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    token = config["MONITORING_TOKEN"]
    if token is not None and (not isinstance(token, str) or not token):
        errors.append(CHECKS["MONITORING_ACCESS_INVALID"](
            path=setting_path("MONITORING_TOKEN"), value=token,
        ))
    if not isinstance(config["SENTRY_ALERTS"], bool):
        errors.append(CHECKS["SENTRY_ALERTS_INVALID"](
            path=setting_path("SENTRY_ALERTS"), value=config["SENTRY_ALERTS"],
        ))
    # Asked for in so many words (the default, on, just logs where there is no Sentry).
    given = getattr(django_settings, "RESILIENCE_CRM", None)
    if (isinstance(given, dict) and given.get("SENTRY_ALERTS") is True
            and importlib.util.find_spec("sentry_sdk") is None):
        errors.append(CHECKS["SENTRY_WITHOUT_SDK"](path=setting_path("SENTRY_ALERTS")))
    return errors + _alert_rule_errors(config["ALERT_RULES"])


def _alert_rule_errors(rules: Any) -> list[CheckMessage]:
    """``ALERT_RULES``: ``{rule: {setting: number above 0} or None}``."""
    check = CHECKS["ALERT_RULES_INVALID"]
    hint = check.hint_for(valid=listing(DEFAULT_RULES))
    if not isinstance(rules, dict):
        return [check(path=setting_path("ALERT_RULES"),
                      error=f"must be a dict, not {type_name(rules)}", hint=hint)]
    errors: list[CheckMessage] = []
    for rule, values in rules.items():
        if rule not in DEFAULT_RULES:
            errors.append(check(path=setting_path("ALERT_RULES", rule),
                                error="is not an alert rule", hint=hint))
        elif values is not None and values is not False:
            if not isinstance(values, dict):
                errors.append(check(path=setting_path("ALERT_RULES", rule),
                                    error=f"must be a dict or None, not {type_name(values)}",
                                    hint=hint))
                continue
            for key, value in values.items():
                if key not in DEFAULT_RULES[rule]:
                    error = (f"is not a setting of this rule (it has "
                             f"{', '.join(DEFAULT_RULES[rule])})")
                elif not is_number(value) or value <= 0:
                    error = f"must be a number above 0, not {value!r}"
                else:
                    continue
                errors.append(check(path=setting_path("ALERT_RULES", rule, key), error=error,
                                    hint=hint))
    return errors
