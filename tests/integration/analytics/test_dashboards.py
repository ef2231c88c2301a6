"""Every Grafana panel's query returns data from a real Prometheus (Debian's) scraping the
services as users run them, after a scenario; the committed dashboard JSON is what the code
generates."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from datetime import UTC, datetime

import httpx

from bench.common import free_port, service_process
from deploy.grafana import dashboards
from shared import auth
from shared import events as ev
from tests.e2e.test_stories import add_key
from tests.integration.issuance.conftest import campaign, entered, publish
from tests.support import unique, wait_for


def test_the_committed_dashboards_are_what_the_code_generates():
    for uid in dashboards.DASHBOARDS:
        assert (dashboards.OUT / f"{uid}.json").read_text() == dashboards.render(uid), \
            f"{uid}.json is stale: make dashboards"


async def test_every_dashboard_panel_query_returns_data_through_prometheus(kafka, tmp_path):
    services = ("consent", "issuance", "analytics")
    ports = {s: free_port() for s in services}
    schemas = {s: unique(f"dash_{s}_") for s in services}
    env = {"VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix, "ANALYTICS_PUBLISH_INTERVAL_S": "0.5",
           # segmentation is not started: the erasure below stays pending, as the age gauge needs
           "CONSENT_PRIVACY_SERVICES": "consent,segmentation"}
    for s in services:
        env[f"{s.upper()}_HTTP_PORT"] = str(ports[s])
        env[f"{s.upper()}_SCHEMA_NAME"] = schemas[s]
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n"
                      "  - job_name: voucherstream\n    static_configs:\n"
                      f"      - targets: [{', '.join(repr(f'127.0.0.1:{p}') for p in ports.values())}]\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=open(tmp_path / "prom.log", "wb"), stderr=subprocess.STDOUT)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for s in services:
                await stack.enter_async_context(service_process(s, env, ports[s], tmp_path / f"{s}.log"))
            _, key = auth.new_key()
            for s in services:
                await add_key(schemas[s], key)
            c = await stack.enter_async_context(httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30))
            issuance, consent = f"http://127.0.0.1:{ports['issuance']}", f"http://127.0.0.1:{ports['consent']}"
            assert (await c.post(f"{issuance}/v1/campaigns", json=campaign(
                budget={"limit": {"amount": 20_000, "currency": "USD"}}))).status_code == 201
            customers = [f"d-{i}" for i in range(6)]
            for cid in customers:
                for purpose in ("profiling", "personalized_offers", "email"):
                    r = await c.post(f"{consent}/v1/consents", json={
                        "customer_id": cid, "purpose": purpose, "granted": True, "policy_version": "v1",
                        "source": "banner", "occurred_at": datetime.now(UTC).isoformat()})
                    assert r.status_code == 201
            await asyncio.sleep(2)
            await publish(kafka, "segment-entered", [entered(x) for x in customers[:3]])
            await asyncio.sleep(3)  # a first burn-rate sample, then more budget used
            await publish(kafka, "segment-entered", [entered(x) for x in customers[3:]] + [entered("d-no-consent")])
            producer_bad = b'{"specversion": "1.0"'
            from shared.kafka import send_all, start_producer

            producer = await start_producer(kafka, "shop")
            await send_all(producer, [(kafka.topic("consent-changed"), b"d-0", producer_bad, None)])
            await producer.stop()
            assert (await c.post(f"{consent}/v1/privacy/erasures", json={"customer_id": "d-5"})).status_code == 202

            async def a_code():
                from tests.support import read_topic

                records = await read_topic(kafka.bootstrap, kafka.topic("delivery-requested"))
                # d-5's voucher is being erased: its code (and data key) may already be gone
                return [ev.decode(r.value)[1] for r in records if r.key.decode() in customers[:3]] or None

            delivery = (await wait_for(a_code, timeout=30, what="a delivery"))[0]
            r = await c.post(f"{issuance}/v1/redemptions", headers={"Idempotency-Key": "dash-1"}, json={
                "code": delivery.code, "customer_id": delivery.customer_id,
                "order": {"amount": {"amount": 15000, "currency": "USD"}, "items": []}})
            assert r.status_code == 201, r.text

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{prom_port}") as p:
                async def all_have_data():
                    empty = []
                    for uid, title, expr in dashboards.queries():
                        body = (await p.get("/api/v1/query", params={"query": expr})).json()
                        assert body["status"] == "success", (expr, body)
                        if not body["data"]["result"]:
                            empty.append(f"{uid} / {title}: {expr}")
                    all_have_data.empty = empty
                    return not empty

                try:
                    await wait_for(all_have_data, timeout=90, interval=2, what="every panel to have data")
                except AssertionError:
                    raise AssertionError("panels without data:\n" + "\n".join(all_have_data.empty)) from None
    finally:
        prom.terminate()
        prom.wait(timeout=30)
    assert len(dashboards.queries()) >= 20
