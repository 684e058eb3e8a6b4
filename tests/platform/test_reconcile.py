"""The reconciler's view of which functions a file fires is the router's."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropwire.functions.platform.registry import ObjectEvent, load_functions
from dropwire.local_emulator.sources.reconcile import Reconciler

REGISTRIES = {name: load_functions(name) for name in ("tests.platform.sample_functions:functions",
                                                      "dropwire.functions.catalog:functions")}
# Key segments near the registries' prefixes and suffixes.
PARTS = st.sampled_from(["incoming", "json-in", "broken", "relay-in", "relay-out", "in", "measured", "x", "incoming.csv",
                         "a.json", "b.csv", "ünï code", "", "use-cases", "uc1", "use-case.json", "config.yaml",
                         "dataset.csv", "batches", "b.jsonl", "batch-outputs", "output.jsonl", "training-runs",
                         "r.request.json", "training_artifacts", "metrics.csv", "forecasts", "curation"])


@pytest.mark.parametrize("registry", sorted(REGISTRIES))
@settings(max_examples=300, deadline=None)
@given(key=st.lists(PARTS, min_size=1, max_size=4).map("/".join), bucket=st.sampled_from(["local", "uploads", "other"]))
def test_the_functions_a_file_fires_are_those_the_router_matches(registry, key, bucket):
    functions = REGISTRIES[registry]
    event = ObjectEvent(bucket=bucket, key=key, raw_key=key, size=1, etag="e", version_id="v", sequencer=None,
                        event_name="ObjectCreated:Put", event_time="", source="folder")
    assert Reconciler(functions, lambda sql, params: [], bucket).watchers(key) == [f.name for f in functions.matching(event)]
