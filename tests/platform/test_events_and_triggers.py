"""Event normalisation, key checks, trigger matching and loop refusal: pure rules, many inputs."""

from __future__ import annotations

import json
import re
import time
import unicodedata
from datetime import datetime
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.platform.objects import InvalidKey, check_key
from dropwire.functions.platform.registry import (
    FunctionRegistry,
    ObjectEvent,
    OnHttp,
    OnSchedule,
    OnUpload,
    Output,
    RecursiveTrigger,
)
from dropwire.local_emulator.sources.s3 import MalformedEvent, example_notification, parse_notification
from dropwire.storage.receipts import sequencer_before


def test_every_record_is_read_and_keys_are_decoded():
    first = example_notification("photos", "red flower.jpg", 10, "abc")
    second = example_notification("photos", "100% sure+1.jpg", 20, "def", version_id="v2")
    body = json.dumps({"Records": first["Records"] + second["Records"], "Extra": {"unknown": True}})
    events = parse_notification(body)
    assert [e.key for e in events] == ["red flower.jpg", "100% sure+1.jpg"]
    assert events[0].raw_key == "red+flower.jpg"
    assert (events[1].size, events[1].etag, events[1].version_id, events[1].version) == (20, "def", "v2", "v2")
    assert events[0].version == "abc"  # no version id: the etag identifies the content


def test_an_example_notification_is_shaped_like_the_ones_s3_sends():
    before = time.time_ns()
    record = example_notification("photos", "a b.jpg", 3, "e1")["Records"][0]
    after = time.time_ns()
    # eventTime with milliseconds and a Z, taken now; a hex sequencer taken now too.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["eventTime"]), record["eventTime"]
    stamp = datetime.fromisoformat(record["eventTime"].replace("Z", "+00:00")).timestamp() * 1e9
    assert before // 10**6 * 10**6 - 10**6 <= stamp <= after
    assert before <= int(record["s3"]["object"]["sequencer"], 16) <= after
    assert example_notification("photos", "k", 1, "e", sequencer="00A1")["Records"][0]["s3"]["object"]["sequencer"] == "00A1"
    # A record without size or eTag (e.g. a delete) is read with size 0.
    del record["s3"]["object"]["size"]
    (event,) = parse_notification(json.dumps({"Records": [record]}))
    assert (event.key, event.size) == ("a b.jpg", 0)


def test_test_events_and_sns_envelopes():
    assert parse_notification(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})) == []
    inner = json.dumps(example_notification("b", "k.csv", 1, "e"))
    assert parse_notification(json.dumps({"Type": "Notification", "Message": inner}))[0].key == "k.csv"


@pytest.mark.parametrize("body, message", [
    ("not json", "not an S3 event notification"),
    ('{"hello": "world"}', "it has no Records"),
    ('{"Records": [{"eventName": "ObjectCreated:Put"}]}', "Object missing required field `s3`"),
    ('[1, 2]', "Expected `object`, got `array`"),
])
def test_malformed_notifications_say_why(body, message):
    with pytest.raises(MalformedEvent, match=message):
        parse_notification(body)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=60))
def test_any_key_survives_url_encoding(key):
    body = json.dumps(example_notification("b", key, 0, "e"))
    assert parse_notification(body)[0].key == key


@pytest.mark.parametrize("key", ["a b+c%20.csv", "über/文件.parquet", "dir/sub/x", "-dash"])
def test_safe_keys_pass(key):
    assert check_key(key) == key


@pytest.mark.parametrize("key, message", [
    ("../etc/passwd", "'.' or '..' segments"), ("a/../../b", "'.' or '..' segments"), ("/etc/passwd", "absolute path"),
    ("bad\nname", "control characters"), ("tab\there", "control characters"), ("", "empty"), ("folder/", "names a folder"),
    ("cafe\u0301.csv", "not in Unicode NFC form.*rename it to 'café.csv'"),
])
def test_unsafe_keys_are_refused(key, message):
    with pytest.raises(InvalidKey, match=message):
        check_key(key)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/."), min_size=1, max_size=30))
def test_a_key_is_accepted_in_exactly_one_unicode_form(key):
    nfc, nfd = unicodedata.normalize("NFC", key), unicodedata.normalize("NFD", key)
    assert check_key(nfc) == nfc
    if nfd != nfc:
        with pytest.raises(InvalidKey, match="not in Unicode NFC form") as refused:
            check_key(nfd)
        assert f"rename it to '{nfc}'" in refused.value.message  # the name itself, not its escape


@given(st.lists(st.text(alphabet="0123456789ABCDEF", min_size=1, max_size=20), min_size=2, max_size=2))
def test_sequencers_compare_after_right_padding(pair):
    a, b = pair
    width = max(len(a), len(b))
    assert sequencer_before(a, b) == (int(a.ljust(width, "0"), 16) < int(b.ljust(width, "0"), 16))


def event(key: str, name: str = "ObjectCreated:Put", bucket: str = "local") -> ObjectEvent:
    return ObjectEvent(bucket=bucket, key=key, raw_key=quote_plus(key), size=1, etag="e", version_id=None,
                       sequencer=None, event_name=name, event_time="", source="s3")


def test_triggers_match_bucket_prefix_suffix_and_event_name():
    trigger = OnUpload(bucket="local", prefix="in/", suffix=".csv", events=("s3:ObjectCreated:*",))
    assert trigger.matches(event("in/a.csv"))
    assert not trigger.matches(event("in/a.txt"))
    assert not trigger.matches(event("out/a.csv"))
    assert not trigger.matches(event("in/a.csv", bucket="other"))
    assert not trigger.matches(event("in/a.csv", name="ObjectRemoved:Delete"))


def handler(event, context):
    return None


def test_a_function_that_would_fire_on_its_own_output_is_refused():
    registry = FunctionRegistry()
    with pytest.raises(RecursiveTrigger, match="would fire on its own output: it writes local/data/out/"):
        registry.function("loop", on=[OnUpload(bucket="local", prefix="data/")],
                          outputs=[Output(bucket="local", prefix="data/out/")])(handler)
    registry.function("fine", on=[OnUpload(bucket="local", prefix="data/")],
                      outputs=[Output(bucket="local", prefix="results/")])(handler)


def test_functions_firing_each_other_in_a_cycle_are_refused():
    registry = FunctionRegistry()
    registry.function("a", on=[OnUpload(bucket="b", prefix="raw/")], outputs=[Output(bucket="b", prefix="clean/")])(handler)
    registry.function("b", on=[OnUpload(bucket="b", prefix="clean/")], outputs=[Output(bucket="b", prefix="features/")])(handler)
    with pytest.raises(RecursiveTrigger, match="a loop: c -> a -> b -> c"):
        registry.function("c", on=[OnUpload(bucket="b", prefix="features/")], outputs=[Output(bucket="b", prefix="raw/x/")])(handler)
    assert sorted(f.name for f in registry) == ["a", "b"]


def test_declaration_mistakes_are_named():
    registry = FunctionRegistry()
    with pytest.raises(DropwireError, match="needs exactly one of cron or every_seconds"):
        OnSchedule(name="s")
    with pytest.raises(DropwireError, match="has no trigger"):
        registry.function("nothing", on=[])(handler)
    registry.function("h", on=[OnHttp()])(handler)
    with pytest.raises(DropwireError, match="registered twice"):
        registry.function("h", on=[OnHttp()])(handler)
