"""The web dashboard in a real browser (Debian's chromium driven by Playwright) against a
real ``dataflow api`` with real pipelines on the local stack: a login, a spec written in
the editor (a bad one shows its errors at their lines), counters that move as rows change
in Postgres, pause and resume, a dead letter browsed and replayed after its rule is fixed,
a viewer who sees no mutating control and whose forged request is refused, the audit
page; every page free of console errors, screenshotted, and its load time printed."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from playwright.sync_api import sync_playwright

from ops.api._dashboard import DIST
from tests.ops.api.conftest import ADMIN_PASSWORD, ApiProcess
from tests.ops.api.sup_support import DDL, cdc_spec, sql
from tests.pipeline_support import read_topic
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
CHROMIUM = Path(os.environ.get("DATAFLOW_CHROMIUM", "/usr/bin/chromium"))

BAD_SPEC = """name: bad_one
source:
  topics: [somewhere]
  format: jsn
transforms:
  - type: nope
quality:
  - name: q
    type: range
    field: amount
    min: lots
"""
class Browser:
    """One page of a headless chromium; console errors and load times are collected."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page, self.base, self.shots = page, base, shots
        self.errors: list[str] = []
        self.loads: dict[str, float] = {}
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def _console(self, m: Any) -> None:
        """Every console error counts (a failed HTTP status too: Chromium logs it as one)."""
        url = (m.location or {}).get("url", "")
        if m.type == "error":
            self.errors.append(f"{m.type}: {m.text} ({url})")

    def open(self, route: str, ready: str, name: str) -> None:
        """Go to ``#/route``, wait for ``ready`` (a selector), note the time, screenshot."""
        started = time.perf_counter()
        self.page.goto(f"{self.base}/ui#/{route}")
        self.page.wait_for_selector(ready, timeout=20_000)
        self.loads[name] = time.perf_counter() - started
        self.shot(name)

    def login(self, user: str, password: str) -> None:
        """With the keyboard only: the user field has the focus, Tab, Enter."""
        started = time.perf_counter()
        self.page.goto(f"{self.base}/ui")
        self.page.wait_for_selector("form[aria-label='log in'] input:focus")
        self.loads["login"] = time.perf_counter() - started
        self.shot("login")
        self.page.keyboard.type(user)
        self.page.keyboard.press("Tab")
        self.page.keyboard.type(password)
        self.page.keyboard.press("Enter")
        self.page.wait_for_selector(f"[data-testid=who]:has-text('{user}')", state="attached")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def text(self, selector: str) -> str:
        return str(self.page.locator(selector).first.inner_text())


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Callable[[str], Browser]]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    if not (DIST / "index.html").is_file():
        pytest.fail("the dashboard is not built: make dashboard (make setup does)")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    pw = sync_playwright().start()
    chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
    made: list[Browser] = []

    def make(base: str, viewport: tuple[int, int] = (1280, 900),
             session: str | None = None) -> Browser:
        """A new context: an empty HTTP cache; ``session`` (the page's stored session, as
        JSON) logged in from its first paint."""
        ctx = chromium.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        if session is not None:
            origin, stored = json.dumps(base), json.dumps(session)
            ctx.add_init_script(f"try {{ if (location.origin === {origin}) sessionStorage"
                                f".setItem('dataflow.session', {stored}); }} catch (e) {{}}")
        made.append(Browser(ctx.new_page(), base, shots))
        return made[-1]

    yield make
    chromium.close()
    pw.stop()
    keep = os.environ.get("DATAFLOW_SCREENSHOTS")  # e.g. docs/ for the README's pictures
    if keep:
        shutil.copytree(shots, keep, dirs_exist_ok=True)
    for b in made:
        print("page load times (s):", {k: round(v, 3) for k, v in b.loads.items()})
    print("screenshots:", shots)


_NAV = """(() => { const n = performance.getEntriesByType('navigation')[0];
  return {dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd}; })()"""


def full_load(b: Browser, route: str, ready: str) -> dict[str, float]:
    """One document load of ``#/route``: ms until ``ready`` shows (the page's content, its
    data fetched) and the navigation timing's DOMContentLoaded and load event ends."""
    started = time.perf_counter()
    b.page.goto(f"{b.base}/ui#/{route}")
    b.page.wait_for_selector(ready, timeout=20_000)
    ready_ms = (time.perf_counter() - started) * 1000
    b.page.wait_for_function("performance.getEntriesByType('navigation')[0].loadEventEnd > 0")
    nav = b.page.evaluate(_NAV)
    return {"ready_ms": round(ready_ms, 1), "dom_content_loaded_ms": round(nav["dcl"], 1),
            "load_event_ms": round(nav["load"], 1)}


def cold_and_warm(browser: Callable[..., Browser], base: str, session: str | None,
                  route: str, ready: str, errors: list[str]) -> dict[str, dict[str, float]]:
    """A first load in a fresh context (empty cache), then a second one after leaving;
    the page's console errors go to ``errors``."""
    b = browser(base, session=session)
    cold = full_load(b, route, ready)
    b.page.goto("about:blank")
    warm = full_load(b, route, ready)
    errors.extend(b.errors)
    b.page.context.close()
    return {"cold": cold, "warm": warm}


def write_load_report(shots: Path, loads: dict[str, dict[str, dict[str, float]]]) -> str:
    """``load-times.json`` and ``load-times.md`` beside the screenshots; the table's text."""
    (shots / "load-times.json").write_text(json.dumps(loads, indent=2) + "\n")
    lines = ["| page | cold: ready ms | cold: load event ms | warm: ready ms | warm: load event ms |",
             "|---|---|---|---|---|"]
    for page, t in loads.items():
        warm = t.get("warm", {})
        lines.append(f"| {page} | {t['cold']['ready_ms']} | {t['cold']['load_event_ms']} | "
                     f"{warm.get('ready_ms', '–')} | {warm.get('load_event_ms', '–')} |")
    table = "\n".join(lines) + "\n"
    (shots / "load-times.md").write_text(
        "# Dashboard page loads (measured by tests/ops/api/test_dashboard.py; not asserted)\n\n"
        "cold: a new browser context (empty cache); warm: the same page loaded again. ready: "
        "until the page shows its content; load event: navigation timing.\n\n" + table)
    return table

def step(b: Browser, stage: str, outcome: str) -> int:
    """A topology step's live counter (``in``, ``out``, ``dropped``, ``failed``)."""
    loc = b.page.locator(f"[data-testid='step-{stage}'] [data-n={outcome}]")
    return int(loc.inner_text().replace(",", "")) if loc.count() else -1


def points(b: Browser, chart: str) -> int:
    """Values the chart draws (its ``data-points``)."""
    return int(b.page.get_attribute(f"[data-testid={chart}]", "data-points") or 0)


def counter(b: Browser, stage: str, word: str) -> int:
    text = b.text(f"[data-testid=stage-{stage}] .stage-counter")
    value = text.split(word, 1)[1].split("·")[0].strip().replace(",", "")
    return -1 if value == "–" else int(value)


def test_the_dashboard_drives_real_pipelines(
        fresh_db: str, api_factory: Callable[..., ApiProcess], kafka_bootstrap: str,
        make_topic: Callable[..., str], unique: str,
        browser: Callable[..., Browser]) -> None:
    sql(fresh_db, DDL, "INSERT INTO items VALUES (1, 'a', 1)")
    api = api_factory()
    b = browser(api.url)
    page = b.page

    # the page and its assets are open, and every one comes from the API itself
    hosts: set[str] = set()
    assets: list[str] = []
    page.on("request", lambda r: (hosts.add(r.url.split("/")[2]),
                                  assets.append(r.url.rsplit("/", 1)[1])))
    b.login("admin", ADMIN_PASSWORD)
    # the login page loads the entry chunk only: no page's code, no Chart.js (they come
    # once the login's token is there and the dashboard opens)
    before = assets[:assets.index("token")]
    assert [a for a in before if a.endswith(".js")] == [
        a for a in before if a.startswith("index-") and a.endswith(".js")] != [], assets
    nav = page.evaluate(_NAV)
    loads: dict[str, dict[str, dict[str, float]]] = {"login (the browser's first page)": {
        "cold": {"ready_ms": round(b.loads["login"] * 1000, 1),
                 "dom_content_loaded_ms": round(nav["dcl"], 1),
                 "load_event_ms": round(nav["load"], 1)}}}
    session = page.evaluate("sessionStorage.getItem('dataflow.session')")
    b.open("", "[data-testid=card-running]", "dashboard")
    assert any(a.startswith("Dashboard-") for a in assets)
    assert any(a.startswith("chart-") for a in assets)  # a page that charts: Chart.js

    # keyboard: the first Tab reaches the skip link, Enter puts the focus on the page
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"

    # the editor: a bad spec's errors at their lines
    b.open("editor", "textarea[name=spec]", "editor")
    page.fill("textarea[name=spec]", BAD_SPEC)
    page.wait_for_selector("[data-testid=spec-error]")
    wait_for(lambda: page.locator("[data-testid=spec-error]").count() == 3, 10, "3 errors")
    lines = {page.locator("[data-testid=spec-error] code").nth(i).inner_text():
             int(page.locator("[data-testid=spec-error]").nth(i).get_attribute("data-line"))
             for i in range(3)}
    assert lines == {"spec.source.format": 4, "spec.transforms[0].type": 6,
                     "spec.quality[0].min": 11}, lines
    assert page.locator(".gutter .bad").count() == 3
    b.shot("editor-errors")
    page.fill("textarea[name=spec]", "name: x\nsource: [unclosed\n")  # YAML itself broken
    wait_for(lambda: page.locator("[data-testid=spec-error]").count() >= 1, 10, "a YAML error")

    # a dry run of pasted sample events on the new pipeline's template (a JSON source with
    # rule amount_positive): one passes, one fails
    page.reload()
    page.wait_for_selector("textarea[name=spec]")
    wait_for(lambda: b.text("[data-testid=validity]") == "valid", 15, "a valid spec")
    page.fill("textarea[name=events]", '{"amount": 5}\n{"amount": -1}')
    page.click("button:text-is('Dry run')")
    result = page.locator("[data-testid=dry-result]")
    result.wait_for()
    assert "Outputs (1)" in result.inner_text() and "Dead letters (1)" in result.inner_text()
    assert "event 2: rule:amount_positive" in result.inner_text()
    b.shot("editor-dry-run")
    # a stateful operator runs too, on fresh state: the duplicate is dropped
    template = page.input_value("textarea[name=spec]")
    page.fill("textarea[name=spec]", template + "stateful:\n  - type: dedup\n    key: id\n"
              "    ttl: 1h\n")
    wait_for(lambda: b.text("[data-testid=validity]").startswith("valid"), 15, "valid")
    page.fill("textarea[name=events]", '{"id": 1, "amount": 5}\n{"id": 1, "amount": 6}\n'
              '{"id": 2, "amount": 7}')
    page.click("button:text-is('Dry run')")
    wait_for(lambda: "Outputs (2)" in result.inner_text(), 10, "two outputs of three")
    assert '{"id":1,"amount":5}\n{"id":2,"amount":7}' in b.text("[data-testid=dry-result] pre")
    assert "fresh, empty state" in result.inner_text()

    # ... then a CDC pipeline written there, reviewed as a diff, created
    name = f"ui_{unique}"
    spec = cdc_spec(name, fresh_db, kafka_bootstrap)
    page.fill("textarea[name=spec]", yaml.safe_dump(spec, sort_keys=False))
    wait_for(lambda: b.text("[data-testid=validity]") == "valid", 15, "a valid spec")
    page.click("text=Review changes")
    assert f"+ name: {name}" in b.text("[data-testid=diff]")
    page.click("text=Create pipeline")
    page.wait_for_url("**/ui#/pipelines/*")
    pid = page.url.rsplit("/", 1)[1]

    # the pipelines table: search, filter, badge; run it from there
    b.open("pipelines", f"[data-testid=row-{name}]", "pipelines")
    page.fill("input[type=search]", "no-such-name")
    assert page.locator(f"[data-testid=row-{name}]").count() == 0
    page.fill("input[type=search]", name)
    page.select_option("select", "stopped")
    row = page.locator(f"[data-testid=row-{name}]")
    assert row.locator("[data-testid=state]").inner_text() == "stopped"
    row.locator(f"button[aria-label='run {name}']").click()

    # the detail page: running, counters move as rows change in Postgres
    b.open(f"pipelines/{pid}", "[data-testid=stage-source]", "pipeline-detail")
    wait_for(lambda: b.text("h1 [data-testid=state]") == "running", 90, "running")
    sql(fresh_db, "INSERT INTO items SELECT g, 'n' || g, g FROM generate_series(2, 40) g")
    wait_for(lambda: counter(b, "sinks", "written") >= 40, 60, "40 rows written")
    # the topology's steps: unwrap passed the 40 rows on, the Postgres sink wrote them
    wait_for(lambda: step(b, "sink:postgres", "out") >= 40, 30, "the sink step's 40 rows")
    assert step(b, "transform:unwrap", "out") >= 40
    before = counter(b, "source", "in")
    unwrapped = step(b, "transform:unwrap", "in")
    sql(fresh_db, "UPDATE items SET qty = qty + 1 WHERE id <= 10")
    wait_for(lambda: counter(b, "source", "in") >= before + 10, 60, "10 more events in")
    wait_for(lambda: step(b, "transform:unwrap", "in") >= unwrapped + 10, 30, "unwrap: +10")
    assert b.text("[data-testid=freshness]").endswith("s ago")  # last_event_time, shown
    assert b.text("[data-testid=freshness-pct]").endswith(" s")  # p50 / p99 of rows written
    assert b.text("[data-testid=restarts]") == "0"
    b.shot("pipeline-detail")

    # the dashboard's cards and live chart while rows flow
    b.open("", "[data-testid=card-running]", "dashboard")
    wait_for(lambda: b.text("[data-testid=card-running] .card-value") == "1", 20, "1 running")
    sql(fresh_db, "INSERT INTO items SELECT g, 'n' || g, g FROM generate_series(41, 400) g")
    wait_for(lambda: b.text("[data-testid=card-in] .card-value") not in ("–", "0.0"), 60,
             "events/s in on the dashboard")
    page.wait_for_timeout(2000)  # a few more samples on the throughput chart
    b.shot("dashboard")

    # pause and resume from the detail page
    b.open(f"pipelines/{pid}", "[data-testid=stage-source]", "pipeline-detail-again")
    page.click(f"button[aria-label='pause {name}']")
    wait_for(lambda: b.text("h1 [data-testid=state]") == "paused", 60, "paused")
    page.click(f"button[aria-label='resume {name}']")
    wait_for(lambda: b.text("h1 [data-testid=state]") == "running", 60, "running again")

    sql(fresh_db, "INSERT INTO items SELECT g, 'n' || g, g FROM generate_series(401, 420) g")
    b.open("monitoring", "[data-testid=chart-freshness] canvas", "monitoring")
    # end-to-end freshness p50/p99 (of the rows the resumed loader wrote) and restarts
    wait_for(lambda: points(b, "chart-freshness-pct") >= 4, 60, "freshness p50/p99 points")
    wait_for(lambda: points(b, "chart-restarts") >= 2, 20, "restart points")
    page.wait_for_timeout(1500)  # a few more samples on the charts
    b.shot("monitoring")
    b.open("connectors", "[data-testid=catalog-postgres]", "connectors")
    page.locator("[data-testid=catalog-postgres] button").first.click()
    page.wait_for_selector("[data-testid=catalog-postgres] form input")
    b.shot("connectors")
    api.call("POST", f"/api/v1/pipelines/{pid}/stop")  # its processes leave the CPU to the next

    # a dead letter: browsed, its rule fixed in the editor, replayed
    source, dlq, out = make_topic("ui-in"), make_topic("ui-dlq"), make_topic("ui-out")
    json_spec = {"name": f"uj_{unique}", "source": {"topics": [source], "format": "json"},
                 "quality": [{"name": "amount_positive", "type": "range", "field": "amount",
                              "min": 0}],
                 "sinks": {"kafka": {"topic": out}}, "dlq": {"topic": dlq}}
    reply = api.call("POST", "/api/v1/pipelines", {"spec": json_spec})
    assert reply.status == 201, reply.text
    jid = reply.json["id"]
    assert api.call("POST", f"/api/v1/pipelines/{jid}/run").status == 202
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in ({"amount": 3}, {"amount": -7}):
        producer.produce(source, json.dumps(value).encode(), b"k")
    assert producer.flush(30) == 0
    b.open(f"dlq/{jid}", "h1", "dlq")
    def dead_letters() -> int:
        page.reload()
        page.wait_for_selector("text=shown")
        return int(page.locator("[data-testid=dead-letter]").count())

    wait_for(lambda: dead_letters() == 1, 90, "one dead letter")
    page.fill("input[placeholder='rule:* or a rule name']", "amount_positive")
    page.fill("input[placeholder=contains]", "amount")
    page.wait_for_selector("[data-testid=dead-letter]")
    page.click("[data-testid=dead-letter] button:text('show')")
    assert json.loads(b.text("[data-testid=payload] pre >> nth=1")) == {"amount": -7}
    b.shot("dlq")

    # quality failures by rule, charted
    b.open("monitoring", "[data-testid=chart-rules] canvas", "monitoring-rules")
    wait_for(lambda: points(b, "chart-rules") >= 2, 20, "failures of amount_positive")
    b.shot("monitoring-rules")

    b.open(f"editor/{jid}", "textarea[name=spec]", "editor-existing")
    wait_for(lambda: "amount_positive" in page.input_value("textarea[name=spec]"), 10, "spec")
    # a dry run on the source topic's last records: the two produced, one failing the rule
    wait_for(lambda: b.text("[data-testid=validity]") == "valid", 15, "valid")
    page.click("text=Dry run on the source topic's last 10 records")
    page.wait_for_selector("[data-testid=dry-sample]")
    assert b.text("[data-testid=dry-sample]").split("\n") == ['{"amount":3}', '{"amount":-7}']
    result = page.locator("[data-testid=dry-result]")
    assert "Outputs (1)" in result.inner_text() and "Dead letters (1)" in result.inner_text()
    assert "event 2: rule:amount_positive" in result.inner_text()
    b.shot("editor-dry-run-source")
    text = page.input_value("textarea[name=spec]")
    fixed = text.replace("min: 0", "min: -10", 1)
    assert fixed != text
    page.fill("textarea[name=spec]", fixed)
    wait_for(lambda: b.text("[data-testid=validity]") == "valid", 15, "valid")
    page.click("text=Review changes")
    diff = b.text("[data-testid=diff]")
    assert "- " in diff and "+ " in diff and "min: -10" in diff
    b.shot("editor-diff")
    page.click("text=Apply new version")
    page.wait_for_selector("text=Saved version 2")
    wait_for(lambda: api.call("GET", f"/api/v1/pipelines/{jid}/status").json["version"] == 2
             and api.call("GET", f"/api/v1/pipelines/{jid}/status").json["state"] == "running",
             60, "version 2 running")
    b.open(f"dlq/{jid}", "[data-testid=dead-letter]", "dlq")
    page.locator("[data-testid=dead-letter] input[type=checkbox]").check()
    page.click("text=Replay selected")
    assert "replayed 1 of 1" in page.locator("[data-testid=replay-report]").inner_text()
    wait_for(lambda: {json.loads(v)["amount"] for _, v, _ in read_topic(kafka_bootstrap, out)
                      if v} == {3, -7}, 60, "the replayed record passed the fixed rule")

    # a viewer sees no mutating control, and the API refuses one forged anyway
    reply = api.call("POST", "/api/v1/users", {"name": "watcher", "role": "viewer",
                                               "password": "watcher-pw-1"})
    assert reply.status == 201, reply.text
    viewer = browser(api.url)
    viewer.login("watcher", "watcher-pw-1")
    viewer.open("pipelines", f"[data-testid=row-{name}]", "viewer-pipelines")
    assert viewer.page.locator("[data-testid=actions]").count() == 0
    assert viewer.page.locator("text=New pipeline").count() == 0
    assert viewer.page.locator("nav a:text('Audit')").count() == 0
    viewer.open(f"dlq/{jid}", "h1", "viewer-dlq")
    viewer.page.wait_for_selector("text=shown")
    assert viewer.page.locator("input[type=checkbox]").count() == 0
    assert viewer.page.locator("text=Replay selected").count() == 0
    viewer.open(f"editor/{jid}", "textarea[name=spec]", "viewer-editor")
    assert viewer.page.locator("text=Review changes").count() == 0
    token = api.login("watcher", "watcher-pw-1")
    for method, path in (("POST", f"/api/v1/pipelines/{jid}/pause"),
                         ("DELETE", f"/api/v1/pipelines/{jid}"),
                         ("POST", f"/api/v1/pipelines/{jid}/dlq/replay")):
        forged = api.call(method, path, {} if method == "POST" else None, auth=token)
        assert forged.status == 403, (method, path, forged.text)
    assert api.call("GET", f"/api/v1/pipelines/{jid}").json["desired"] == "running"
    # an API key logs in on the login page too (its role: an operator's controls)
    created = api.call("POST", "/api/v1/keys", {"name": f"ui-{unique}", "role": "operator"})
    assert created.status == 201, created.text
    viewer.page.click("text=Log out")
    viewer.page.fill("input[name=api_key]", created.json["key"])
    viewer.page.click("text=Log in with the key")
    viewer.page.wait_for_selector("[data-testid=who]:has-text('operator')")
    viewer.open(f"dlq/{jid}", "[data-testid=dead-letter] input[type=checkbox]", "key-dlq")

    # the audit page (an admin's): the editor's create and the viewer's refused pause
    b.open("audit", "[data-testid=audit-row]", "audit")
    rows = page.locator("[data-testid=audit-row]").all_inner_texts()
    assert any("create_pipeline" in r and "admin" in r and "succeeded" in r for r in rows)
    assert any("pause_pipeline" in r and "watcher" in r and "denied" in r for r in rows)

    # a phone: the menu opens from its button
    phone = browser(api.url, (390, 844))
    phone.login("admin", ADMIN_PASSWORD)
    phone.open("", "[data-testid=card-running]", "phone-dashboard")
    assert not phone.page.locator("nav a").first.is_visible()
    phone.page.click(".menu-btn")
    assert phone.page.locator("nav a").first.is_visible()
    phone.shot("phone-menu")

    # every page's load: cold (an empty cache) and warm; reported, not asserted
    pages = {"login": ("", "form[aria-label='log in'] input:focus", None),
             "dashboard": ("", "[data-testid=card-running]", session),
             "pipelines": ("pipelines", f"[data-testid=row-{name}]", session),
             "pipeline-detail": (f"pipelines/{pid}", "[data-testid=stage-source]", session),
             "editor": ("editor", "textarea[name=spec]", session),
             "editor-existing": (f"editor/{jid}", "textarea[name=spec]", session),
             "connectors": ("connectors", "[data-testid=catalog-postgres]", session),
             "monitoring": ("monitoring", "[data-testid=chart-freshness] canvas", session),
             "dlq": (f"dlq/{jid}", "[data-testid=dead-letter]", session),
             "audit": ("audit", "[data-testid=audit-row]", session)}
    measured_errors: list[str] = []
    for page_name, (route, ready, as_user) in pages.items():
        loads[page_name] = cold_and_warm(browser, api.url, as_user, route, ready,
                                         measured_errors)
    print("page loads (ms; not asserted):\n" + write_load_report(b.shots, loads))

    assert hosts == {api.url.split("/")[2]}, hosts  # nothing from another host
    assert "unexpected error" not in api.log.read_text()  # no 500 behind the pages either
    assert b.errors == viewer.errors == phone.errors == [], b.errors + viewer.errors + phone.errors
    assert measured_errors == [], measured_errors


def test_assets_are_gzipped_and_hashed_ones_cached(
        api_factory: Callable[..., ApiProcess]) -> None:
    if not (DIST / "index.html").is_file():
        pytest.fail("the dashboard is not built: make dashboard (make setup does)")
    api = api_factory()
    gz = {"Accept-Encoding": "gzip"}
    page = api.call("GET", "/ui", auth=None)
    assert (page.status, page.headers["Cache-Control"]) == (200, "no-cache")
    entry = re.search(r'src="/ui/assets/([^"]+)"', page.text)
    assert entry, page.text
    path = f"/ui/assets/{entry.group(1)}"
    req = urllib.request.Request(api.url + path, headers=gz)
    with urllib.request.urlopen(req, timeout=30) as resp:
        body, headers = resp.read(), resp.headers
    assert (headers["Content-Encoding"], headers["Vary"], headers["Content-Type"]) == (
        "gzip", "Accept-Encoding", "text/javascript")
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    raw = (DIST / "assets" / entry.group(1)).read_bytes()
    assert gzip.decompress(body) == raw and len(body) < len(raw) / 2
    plain = api.call("GET", path, auth=None)  # no Accept-Encoding: the file as it is
    assert plain.status == 200 and "Content-Encoding" not in plain.headers
    assert plain.text.encode() == raw
    assert api.call("GET", "/ui/assets/nope.js", auth=None).status == 404
