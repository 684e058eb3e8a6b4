"""Object keys at every entry (real files, real HTTP): one Unicode form, no absolute keys; and
a /health that anyone may call and that therefore tells nothing but whether it is up."""

from __future__ import annotations

import logging
import unicodedata

import pytest

from tests.conftest import wait_for
from tests.platform.test_emulator import assert_error_shape, invocations

pytestmark = pytest.mark.slow

NFC = unicodedata.normalize("NFC", "incoming/café.csv")
NFD = unicodedata.normalize("NFD", NFC)


def test_absolute_keys_are_refused_and_every_entry_keeps_one_unicode_form(start_emulator, caplog):
    emulator, http = start_emulator()
    bucket = emulator.settings.bucket_path
    assert NFC != NFD and len(NFD) == len(NFC) + 1

    refused = assert_error_shape(http.put("/buckets/local/objects/%2Fabs/x.json", content=b"{}"), 400, "invalid_key")
    assert "'/abs/x.json' is an absolute path" in refused["message"]
    assert not (bucket / "abs").exists()

    # Through HTTP the gateway names the stored object, so it stores the NFC spelling: both
    # spellings are one object.
    for spelling in (NFD, NFC):
        uploaded = http.put(f"/buckets/local/objects/{spelling}", content=b"a,b\n1,2\n")
        assert uploaded.status_code == 201 and uploaded.json()["key"] == NFC
    assert [p.name for p in (bucket / "incoming").iterdir()] == [NFC.split("/")[1]]
    wait_for(lambda: invocations(emulator, "measure"), what="the upload to be handled")

    # A file dropped under its NFD name is refused with a line that shows the difference.
    with caplog.at_level(logging.WARNING, logger="dropwire.router"):
        (bucket / unicodedata.normalize("NFD", "incoming/naïve.csv")).write_text("x")
        wait_for(lambda: any("is not in Unicode NFC form" in r.getMessage() for r in caplog.records),
                 what="the NFD key to be refused")
    line = next(r.getMessage() for r in caplog.records if "is not in Unicode NFC form" in r.getMessage())
    # The key as it is (escaped: the two spellings print alike), the name to use as it prints.
    assert "incoming/nai\\u0308ve.csv" in line and "rename it to 'incoming/naïve.csv'" in line
    (bucket / "incoming" / "last.csv").write_text("x")
    wait_for(lambda: len(invocations(emulator, "measure")) == 2, what="the last file to be handled")
    assert [o for o, _, _ in invocations(emulator, "measure")] == ["succeeded", "succeeded"]


def test_health_is_open_and_tells_nothing_but_that_it_is_up(start_emulator):
    emulator, http = start_emulator(DROPWIRE_HTTP__API_TOKENS='["s3cret"]')
    health = http.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert str(emulator.settings.data_dir) not in health.text and "measure" not in health.text
    emulator.store.close()
    down = assert_error_shape(http.get("/health"), 503, "not_ready")
    assert str(emulator.settings.data_dir) not in str(down)
