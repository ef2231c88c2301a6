"""The voucherstream CLI on the real broker: publish validates and wraps shop events (sealing
their personal fields if asked); tail decodes them back, dead letters with their reason; seal is
the shop's pipe into kcat."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def cli(*args: str, env: dict) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "voucherstream.cli", *args, cwd=ROOT,
                                                env=os.environ | {"PYTHONPATH": str(ROOT)} | env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_publish_then_tail_round_trips_and_bad_input_is_refused_clearly(kafka, tmp_path):
    env = {"VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix}
    data = {"cart_id": "k-1", "customer_id": "cust-9", "value": {"amount": 31000, "currency": "USD"},
            "abandoned_at": "2026-11-29T10:00:00Z", "email": "dropped@example.com"}
    file = tmp_path / "carts.json"
    file.write_text(json.dumps([data, data | {"cart_id": "k-2"}]))
    code, _, err = await cli("publish", "cart-abandoned", "--file", str(file), env=env)
    assert code == 0 and "published 2 shop.cart.abandoned.v1" in err
    code, _, err = await cli("publish", "cart-abandoned", "--data", json.dumps(data | {"value": {"amount": 1.5}}), env=env)
    assert code == 1 and "data.value.amount" in err
    code, _, err = await cli("publish", "no-such-topic", "--data", "{}", env=env)
    assert code == 1 and "not in the topic registry" in err
    code, out, _ = await cli("tail", "cart-abandoned", "--from-beginning", "--count", "2", env=env)
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [x["data"]["cart_id"] for x in sorted(lines, key=lambda x: x["data"]["cart_id"])] == ["k-1", "k-2"]
    assert all(x["type"] == "shop.cart.abandoned.v1" and x["key"] == "cust-9" and "email" not in x["data"] for x in lines)


async def test_tail_shows_a_cancelled_delivery_for_the_shop_s_sender(kafka):
    from datetime import UTC, datetime

    from shared import events as ev
    from shared.kafka import send_all, start_producer

    cancelled = ev.DeliveryCancelled(voucher_id="v-1", campaign_id="cart-20", customer_id="cust-9", channel="email",
                                     reason="consent_withdrawn", cancelled_at=datetime.now(UTC))
    producer = await start_producer(kafka, "test")
    await send_all(producer, [(kafka.topic("delivery-requested"), b"cust-9", ev.encode(cancelled, source="t"), None)])
    await producer.stop()
    code, out, _ = await cli("tail", "delivery-requested", "--from-beginning", "--count", "1",
                             env={"VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix})
    line = json.loads(out.splitlines()[0])
    assert code == 0 and line["type"] == "voucherstream.delivery.cancelled.v1"
    assert line["data"]["voucher_id"] == "v-1" and line["data"]["reason"] == "consent_withdrawn"


async def test_the_shop_seals_personal_fields_and_an_erasure_makes_them_unreadable(kafka):
    import asyncpg

    from shared.datakeys import DataKeys
    from shared.settings import DataKeySettings, PostgresSettings

    env = {"VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix}
    customer = f"cust-{kafka.topic_prefix.strip('_')[-8:]}"
    data = {"cart_id": "k-sealed-1", "customer_id": customer, "value": {"amount": 31000, "currency": "USD"},
            "abandoned_at": "2026-11-29T10:00:00Z"}
    code, _, err = await cli("publish", "cart-abandoned", "--seal", "--data", json.dumps(data), env=env)
    assert code == 0, err
    code, out, _ = await cli("tail", "cart-abandoned", "--from-beginning", "--count", "1", env=env)
    line = json.loads(out.splitlines()[0])
    assert "k-sealed-1" not in out and line["sealed"]["data"] == {"customer_id": customer,
                                                                 "abandoned_at": "2026-11-29T10:00:00Z"}
    code, out, _ = await cli("tail", "cart-abandoned", "--from-beginning", "--count", "1", "--open", env=env)
    assert json.loads(out.splitlines()[0])["data"]["cart_id"] == "k-sealed-1"
    pool = await asyncpg.create_pool(PostgresSettings().dsn.get_secret_value(), min_size=1, max_size=1)
    try:  # an erasure destroys the key
        async with pool.acquire() as conn:
            assert await DataKeys(DataKeySettings(), lambda: pool).destroy(conn, [customer]) == 1
    finally:
        await pool.close()
    code, out, _ = await cli("tail", "cart-abandoned", "--from-beginning", "--count", "1", "--open", env=env)
    assert code == 0 and "k-sealed-1" not in out and "sealed" in json.loads(out.splitlines()[0])

    # `seal` is the same for a pipe into kcat: key|envelope lines in, sealed out; bad input refused.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voucherstream.cli", "seal", "-K", "|", cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    from shared import events as ev

    event = ev.CartAbandoned.model_validate(data)
    out, err = await proc.communicate(customer.encode() + b"|" + ev.encode(event, source="shop") + b"\n")
    key, _, value = out.rstrip(b"\n").partition(b"|")
    assert proc.returncode == 0 and key == customer.encode() and b"k-sealed-1" not in value
    assert json.loads(value)["datakey"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voucherstream.cli", "seal", cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(b'{"specversion": "1.0"}\n')
    assert proc.returncode == 1 and out == b"" and b"nothing was written" in err


def test_make_venv_puts_this_clones_voucherstream_command_in_dot_venv_bin(tmp_path):
    """The README's `export PATH="$PWD/.venv/bin:$PATH"`: the command runs this checkout's CLI from
    anywhere, with no PYTHONPATH (the virtualenv itself is shared by every clone)."""
    import subprocess

    exe = ROOT / ".venv" / "bin" / "voucherstream"
    assert exe.exists(), "make venv installs .venv/bin/voucherstream"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(exe), "topics", "--help"], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Usage: voucherstream topics" in done.stdout
    where = subprocess.run([str(exe.parent / "python"), "-c", "import voucherstream.cli as c; print(c.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True,
                           env=env | {"PYTHONPATH": ""}, timeout=60)  # the package is not installed in the venv
    assert where.returncode != 0
