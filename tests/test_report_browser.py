"""The report in a real headless Chromium (the system's Debian package, driven over the DevTools protocol;
nothing is downloaded): the count shown, filters against pandas counts of samples.jsonl, search, permalinks,
untrusted output that stays text, no network, a non-blank screenshot; the comparison and a large compressed
run open too.

No chromium on the PATH: the tests skip, saying so, unless STEERLAB_REQUIRE_BROWSER=1 (``make test`` sets it
where it could install chromium), where they fail."""

from __future__ import annotations

import io
import json
import os
import time
from urllib.parse import quote

import numpy as np
import pytest
from conftest import run_cli
from test_report import NEEDLE, PLANTED_ID_INDEX, XSS, runs  # noqa: F401 (the module fixture)

from steerlab.harness.records import load_run, read_samples, rewrite_samples


@pytest.fixture(scope="module")
def browser():
    from steerlab.report.html_browser import Browser, find_chromium

    binary = find_chromium()
    missing = None
    if binary is None:
        missing = "no chromium on the PATH (apt-get install chromium): the report's browser tests are skipped"
    else:
        try:
            import websocket  # noqa: F401
        except ImportError:
            missing = "websocket-client is not installed (pip install -e .[dev]): browser tests skipped"
    if missing:
        if os.environ.get("STEERLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"STEERLAB_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    try:
        b = Browser(binary)
    except RuntimeError:  # a container without user namespaces: Chromium's sandbox cannot start there
        b = Browser(binary, sandbox=False)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def page(runs, tmp_path_factory):  # noqa: F811
    from steerlab.report.html import write_report

    return write_report(runs["af"], tmp_path_factory.mktemp("page") / "af.html").resolve()


def choose(b, field: str, value: str) -> int:
    """Set one filter as a user would (the select's value, then its change event); the count shown."""
    b.evaluate(f"(() => {{ const s = document.getElementById({json.dumps(field)}); s.value = {json.dumps(value)};"
               " s.dispatchEvent(new Event('change')); })()")  # fmt: skip
    return int(b.evaluate("document.getElementById('count').textContent"))


def test_counts_filters_search_and_permalink(browser, page, runs):  # noqa: F811
    frame = load_run(runs["af"])
    browser.open(page.as_uri())
    total = int(browser.evaluate("document.getElementById('total').textContent"))
    assert total == int(browser.evaluate("document.getElementById('count').textContent")) == len(frame) == 24
    assert browser.evaluate("document.querySelectorAll('#samples article.sample').length") == 24  # one page of 50
    # filters: exactly the samples pandas counts in samples.jsonl
    monitored = frame[frame["condition"] == "monitored"]
    assert choose(browser, "f-condition", "monitored") == len(monitored) == 12
    both = monitored[monitored["label"] == "compliant"]
    assert choose(browser, "f-label", "compliant") == len(both) and 0 < len(both) < 12
    choose(browser, "f-condition", "")
    assert choose(browser, "f-label", "compliant") == (frame["label"] == "compliant").sum()
    choose(browser, "f-label", "")
    assert choose(browser, "f-multiplier", "4") == (frame["multiplier"] == 4).sum() == 8
    assert choose(browser, "f-arm", "real") == ((frame["multiplier"] == 4) & (frame["arm"] == "real")).sum() == 4
    choose(browser, "f-multiplier", "")
    choose(browser, "f-arm", "")
    # judge score range: A in [2, 3]
    browser.evaluate("document.getElementById('f-jmin').value = '2'; document.getElementById('f-jmax').value = '3'")
    assert choose(browser, "f-judge", "A") == frame["judge_A"].between(2, 3).sum() > 0
    choose(browser, "f-judge", "")
    assert int(browser.evaluate("document.getElementById('count').textContent")) == 24
    # full-text search finds the one planted sample
    planted_id = frame["id"][PLANTED_ID_INDEX]
    browser.evaluate(f"document.getElementById('q').value = {json.dumps(NEEDLE.upper())};"
                     "document.getElementById('q').dispatchEvent(new Event('input'))")  # fmt: skip
    time.sleep(0.3)  # the search waits 120 ms after the last key
    assert browser.evaluate("document.getElementById('count').textContent") == "1"
    assert browser.evaluate("document.querySelector('#samples article.sample').dataset.id") == planted_id
    # its output, a script, is shown as text and never ran
    shown = browser.evaluate("document.querySelector('#samples article.sample .pane.out pre').textContent")
    assert shown == XSS and browser.evaluate("typeof window.__xss") == "undefined"
    assert not browser.of("Page.javascriptDialogOpening") and not browser.of("Runtime.exceptionThrown")
    # a permalink opens that sample: in the open page (hashchange) and loaded anew
    browser.open(page.as_uri() + "#sample=" + quote(planted_id, safe=""), fresh=False)
    assert browser.evaluate("document.querySelector('#focus article.sample').dataset.id") == planted_id
    browser.open(page.as_uri() + "#sample=" + quote(planted_id, safe=""))
    assert browser.evaluate("document.getElementById('count').textContent") == "24"
    assert browser.evaluate("document.querySelector('#focus article.sample').dataset.id") == planted_id
    link = browser.evaluate("document.querySelector('#samples article.sample a.perma').getAttribute('href')")
    first = frame["id"][0]
    browser.open(page.as_uri() + link)
    assert link == "#sample=" + quote(first, safe="")
    assert browser.evaluate("document.querySelector('#focus article.sample').dataset.id") == first
    # nothing but the file itself and its inline data: URLs was requested (and a proxy to nowhere stood ready)
    assert {u.split(":", 1)[0] for u in browser.requests()} <= {"file", "data"}
    assert not browser.of("Runtime.exceptionThrown")


def test_screenshot_is_not_blank(browser, page):
    from PIL import Image

    browser.open(page.as_uri())
    browser.evaluate("document.querySelector('#samples').scrollIntoView()")
    png = browser.screenshot()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    assert pixels.shape[0] == 1400 * 1000
    non_white = (pixels < 235).any(axis=1).mean()
    colours = len(np.unique(pixels, axis=0))
    assert non_white > 0.05 and colours > 50, (non_white, colours)


def test_compare_and_a_large_compressed_run_open(browser, runs, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cmp.html"
    code, _, err = run_cli(["report", "--compare", runs["plus"], runs["minus"], "--out", out], capsys)
    assert code == 0, err
    browser.open(out.resolve().as_uri())
    assert browser.evaluate("document.getElementById('count').textContent") == "8"
    assert browser.evaluate("document.querySelectorAll('#samples article.pair').length") == 8
    assert browser.evaluate("document.querySelectorAll('#samples article.pair > article.sample').length") == 16
    assert browser.evaluate("document.querySelectorAll('#samples .badge.b-gated').length") == 4  # steer_only
    assert choose(browser, "f-condition", "unmonitored") == 4
    assert browser.evaluate("document.querySelectorAll('#samples .badge.b-gated').length") == 4
    assert choose(browser, "f-condition", "monitored") == 4
    assert browser.evaluate("document.querySelectorAll('#samples .badge.b-gated').length") == 0
    # 3,000 samples: embedded gzip + base64, decompressed by the browser, drawn a page of 50 at a time
    big = tmp_path / "big"
    big.mkdir()
    (big / "header.json").write_bytes((runs["af"] / "header.json").read_bytes())
    samples = read_samples(runs["af"])
    rewrite_samples(big, [{**samples[i % len(samples)], "id": f"row-{i}"} for i in range(3000)])
    code, _, err = run_cli(["report", big, "--out", tmp_path / "big.html"], capsys)
    assert code == 0, err
    assert 'data-encoding="gzip+base64"' in (tmp_path / "big.html").read_text()
    seconds = browser.open((tmp_path / "big.html").resolve().as_uri())
    assert browser.evaluate("document.getElementById('count').textContent") == "3000"
    assert browser.evaluate("document.querySelectorAll('#samples article.sample').length") == 50
    assert seconds < 20
    assert not browser.of("Runtime.exceptionThrown")


def test_a_malformed_permalink_is_a_message_and_later_links_still_work(browser, page, runs):  # noqa: F811
    """#sample=%E0%A4 is no URI escape (decodeURIComponent throws): the page still draws every sample, says it
    has no such sample, and a later permalink in the open page (hashchange) still opens its sample."""
    browser.open(page.as_uri() + "#sample=%E0%A4")
    assert browser.evaluate("document.body.dataset.ready") == "1"
    assert browser.evaluate("document.getElementById('count').textContent") == "24"
    assert browser.evaluate("document.querySelector('#focus p.warn').textContent") == "no sample %E0%A4 in this report"
    planted_id = read_samples(runs["af"])[PLANTED_ID_INDEX]["id"]
    browser.open(page.as_uri() + "#sample=" + quote(planted_id, safe=""), fresh=False)
    assert browser.evaluate("document.querySelector('#focus article.sample').dataset.id") == planted_id
    assert not browser.of("Runtime.exceptionThrown")


def test_compare_pair_header_names_both_sides_values(browser, runs, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cmp.html"
    code, _, err = run_cli(["report", "--compare", runs["plus"], runs["minus"], "--out", out], capsys)
    assert code == 0, err
    browser.open(out.resolve().as_uri())
    heads = browser.evaluate("[...document.querySelectorAll('#samples .pairhead')].map(x => x.textContent)")
    assert len(heads) == 8 and all(h.endswith("multiplier 4 (plus) vs -4 (minus)") for h in heads), heads
    assert not any("undefined" in h for h in heads)  # no claim in these runs: none shown
    assert "compared by multiplier" in browser.evaluate("document.getElementById('pairinfo').textContent")


def test_the_chat_templates_own_system_prompt_is_shown(browser, runs, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "ts"
    run.mkdir()
    (run / "header.json").write_bytes((runs["af"] / "header.json").read_bytes())
    samples = read_samples(runs["af"])[:1]
    samples[0].update(system=None, template_system="You are a helpful AI assistant named SmolLM")
    rewrite_samples(run, samples)
    code, _, err = run_cli(["report", run, "--out", tmp_path / "r.html"], capsys)
    assert code == 0, err
    browser.open((tmp_path / "r.html").resolve().as_uri())
    box = "document.querySelector('#samples details.tsystem')"
    assert browser.evaluate(box + ".querySelector('summary').textContent").startswith("system prompt (none given")
    assert browser.evaluate(box + ".textContent").endswith("You are a helpful AI assistant named SmolLM")
