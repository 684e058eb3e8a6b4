"""The curation section of the settings: from the environment (schemas as a JSON object), the
token masked wherever settings are shown, and settings that cannot work refused with the field."""

from __future__ import annotations

import json

import pytest

from dropwire.functions.curation.schemas import Classification, resolve
from dropwire.functions.curation.settings import curation_settings
from dropwire.local_emulator.settings import SettingsError, describe_settings, load_settings

TOKEN = "ls-legacy-token-0123456789"


def test_curation_settings_come_from_the_environment_with_the_token_masked():
    settings = load_settings(environ={
        "DROPWIRE_CURATION__LABEL_STUDIO_URL": "http://reviewer:pw@127.0.0.1:8080",
        "DROPWIRE_CURATION__LABEL_STUDIO_TOKEN": TOKEN,
        "DROPWIRE_CURATION__SCHEMAS": json.dumps({"sentiment": {"kind": "classification", "labels": ["pos", "neg"]}})})
    config = curation_settings(settings.domain_config())
    assert config.label_studio_token == TOKEN
    assert resolve("sentiment", config.schemas)[1] == Classification(labels=["pos", "neg"])
    described = describe_settings(settings)["curation"]
    assert described["label_studio_token"] == "****"
    assert described["label_studio_url"] == "http://reviewer:****@127.0.0.1:8080"
    assert TOKEN not in json.dumps(describe_settings(settings))


@pytest.mark.parametrize(("env", "message"), [
    ({"DROPWIRE_CURATION__LABEL_STUDIO_URL": "http://127.0.0.1:8080"}, "needs curation.label_studio_token"),
    ({"DROPWIRE_CURATION__LABEL_STUDIO_URL": "127.0.0.1:8080", "DROPWIRE_CURATION__LABEL_STUDIO_TOKEN": "t"},
     "must be a URL"),
    ({"DROPWIRE_CURATION__SCHEMAS": "{not json"}, "DROPWIRE_CURATION__SCHEMAS must be a JSON object"),
])
def test_settings_that_cannot_work_are_refused(env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=env)
