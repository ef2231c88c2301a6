"""`make bench`: the whole pipeline measured against this machine's own limits, in one run.

Each step is one of the project's benchmarks, run as its own process on the local stack (the
services under test are their own processes too); the figures are gathered into one JSON file and
one markdown table — each figure next to the raw limit of the same machine measured in the same
run, and the ratio between them.

    python -m bench.all                       # make bench: about 12 minutes
    python -m bench.all --smoke               # make bench-smoke: about 2 minutes, tiny sizes
    python -m bench.all --only limits,pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import ROOT

# step -> (module, full arguments, smoke arguments, extra environment)
STEPS: dict[str, tuple[str, list[str], list[str], dict[str, str]]] = {
    "limits": ("bench.limits", ["--records", "500000"], ["--records", "20000"], {}),
    "pipeline": ("bench.pipeline", ["--saturation", "10000", "--rate", "1000", "--seconds", "10", "--profile", "8"],
                 ["--saturation", "500", "--rate", "100", "--seconds", "2"], {}),
    "pipeline_2_workers": ("bench.pipeline", ["--saturation", "10000", "--rate", "0", "--instances", "2"],
                           ["--saturation", "300", "--rate", "0", "--instances", "2"], {}),
    "pipeline_12_partitions": ("bench.pipeline", ["--saturation", "10000", "--rate", "0"],
                               ["--saturation", "300", "--rate", "0"], {"VOUCHERSTREAM_CUSTOMER_PARTITIONS": "12"}),
    "pipeline_cluster": ("bench.pipeline", ["--saturation", "10000", "--rate", "0", "--cluster"],
                         ["--saturation", "300", "--rate", "0", "--cluster"], {}),
    "segmentation": ("bench.segmentation", ["--events", "50000", "--customers", "5000"],
                     ["--events", "2000", "--customers", "200"], {}),
    "issuance": ("bench.issuance", ["--saturation", "20000", "--rate", "1000", "--seconds", "10"],
                 ["--saturation", "500", "--rate", "100", "--seconds", "2"], {}),
    "checkout": ("bench.checkout", ["--rate", "1000", "--seconds", "10", "--max-rate", "3000", "--workers", "1"],
                 ["--rate", "50", "--seconds", "2", "--max-rate", "100", "--workers", "1", "--pg-seconds", "2"], {}),
    "checkout_stack": ("bench.checkout", ["--rate", "1000", "--seconds", "10", "--workers", "1", "--stack", "50"],
                       ["--rate", "50", "--seconds", "2", "--workers", "1", "--stack", "10"], {}),
    "consent": ("bench.consent_propagation", ["--rate", "500", "--seconds", "15"], ["--rate", "50", "--seconds", "2"], {}),
    "freshness": ("bench.freshness", ["--redemptions", "20"], ["--redemptions", "3"], {}),
    "counts": ("bench.counts", ["--vouchers", "1000000"], ["--vouchers", "2000", "--repeat", "3"], {}),
    "redeem_batch": ("bench.redeem_batch", ["--sizes", "1,5,20,50"], ["--sizes", "1,5", "--redemptions", "50"], {}),
    "privacy": ("bench.privacy", ["--codec-events", "20000", "--erasures", "100", "--load-rate", "200", "--seconds", "20"],
                ["--codec-events", "1000", "--erasures", "5", "--load-rate", "20", "--seconds", "2"], {}),
    "memory": ("bench.memory", ["--events", "200000", "--customers", "20000"], ["--events", "3000", "--customers", "300"], {}),
}


def run_step(name: str, smoke: bool, logdir: Path) -> dict:
    module, full, small, extra = STEPS[name]
    args = small if smoke else full
    env = os.environ | {"PYTHONPATH": str(ROOT)} | extra
    if "VOUCHERSTREAM_CUSTOMER_PARTITIONS" not in extra:
        env.pop("VOUCHERSTREAM_CUSTOMER_PARTITIONS", None)
    t0 = time.perf_counter()
    print(f"[bench] {name}: python -m {module} {' '.join(args)}", flush=True)
    with open(logdir / f"{name}.log", "w") as err:
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=err, text=True, timeout=1200)
    start = proc.stdout.find("{")
    if start < 0:
        raise RuntimeError(f"{name} printed no result (exit {proc.returncode}); see {logdir / (name + '.log')}")
    result, _ = json.JSONDecoder().raw_decode(proc.stdout[start:])
    result["_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[bench] {name}: done in {result['_seconds']} s", flush=True)
    return result


def ratio(a, b) -> str:
    try:
        return f"{a / b:.3g}"
    except (TypeError, ZeroDivisionError):
        return "–"


def num(x, unit: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and x < 100:
        return f"{x:,.1f}{unit}"
    return f"{x:,.0f}{unit}"


def verdict(value, target: str | None) -> str:
    if not target or value is None:
        return ""
    op, text = target.split()
    bound = float(text.replace(",", ""))
    ok = value < bound if op == "<" else value >= bound
    if ok:
        return f"met ({target})"
    by = value / bound if op == "<" else bound / value if value else float("inf")
    return f"**missed** ({target}; ×{by:.1f})"


def rows(r: dict) -> list[tuple[str, str, str, str, str]]:
    """(figure, value, limit on this machine, ratio, target) for each line of the table."""
    out = []
    lim, pipe = r.get("limits", {}), r.get("pipeline", {})
    kp, ak = lim.get("kafka_perf_tools", {}), lim.get("raw_aiokafka", {})
    if lim:
        out += [("Kafka produce, ProducerPerformance (400 B, acks=all)", num(kp.get("produce_per_s"), "/s"), "", "", ""),
                ("Kafka consume, ConsumerPerformance", num(kp.get("consume_per_s"), "/s"), "", "", ""),
                ("Kafka produce, raw aiokafka (the services' client)", num(ak.get("produce_per_s"), "/s"),
                 num(kp.get("produce_per_s"), "/s Java"), ratio(ak.get("produce_per_s"), kp.get("produce_per_s")), ""),
                ("Kafka produce, raw aiokafka batch builder (the outbox relay's way), CPU per record",
                 f"{num(ak.get('produce_batched_per_s'), '/s')}, {num(ak.get('produce_batched_cpu_us_per_record'), ' µs')}",
                 f"{num(ak.get('produce_cpu_us_per_record'), ' µs')} per send", ratio(
                     ak.get("produce_batched_cpu_us_per_record"), ak.get("produce_cpu_us_per_record")), ""),
                ("Kafka consume, raw aiokafka", num(ak.get("consume_per_s"), "/s"),
                 num(kp.get("consume_per_s"), "/s Java"), ratio(ak.get("consume_per_s"), kp.get("consume_per_s")), ""),
                ("PostgreSQL inserts, 500-row batches", num(lim.get("raw_postgres_insert_rows_per_s"), " rows/s"), "", "", "")]
    co = r.get("checkout", {})
    if co:
        out += [("PostgreSQL single-row UPDATE, pgbench 10 clients", num(co["raw_postgres_update_max"]["tps"], " tps"), "", "", ""),
                ("PostgreSQL one hot row UPDATE, pgbench 10 clients",
                 num(co["raw_postgres_hot_row_update_max"]["tps"], " tps"), "", "", "")]
    if pipe:
        e2e = pipe.get("events_per_s_end_to_end")
        out += [("**Shop events/s end to end** (cart → `delivery-requested`, saturated)", num(e2e, "/s"),
                 num(ak.get("consume_per_s"), "/s aiokafka consume"), ratio(e2e, ak.get("consume_per_s")),
                 verdict(e2e, ">= 2000")),
                (f"Event-to-delivery p50 at {pipe.get('paced_rate_per_s', 0):,} events/s", num(pipe.get("p50_ms"), " ms"), "", "", ""),
                (f"**Event-to-delivery p99 at {pipe.get('paced_rate_per_s', 0):,} events/s**", num(pipe.get("p99_ms"), " ms"),
                 num(kp.get("produce_p99_ms"), " ms Kafka produce p99"), ratio(pipe.get("p99_ms"), kp.get("produce_p99_ms")),
                 verdict(pipe.get("p99_ms"), "< 250"))]
        stages = pipe.get("stages_ms") or {}
        for key, what in (("cart_to_segment_entered", "cart → `segment-entered` (segmentation, its relay)"),
                          ("segment_entered_to_delivery", "`segment-entered` → `delivery-requested` (issuance, hold, relay)")):
            if key in stages:
                out.append((f"Where it goes at {pipe.get('paced_rate_per_s', 0):,}/s: {what}, p50 / p99",
                            f"{num(stages[key]['p50'], '')} / {num(stages[key]['p99'], ' ms')}", "", "", ""))
        order = pipe.get("consent_ordering")
        if order:
            share = order["consent_changes_share"]
            out += [(f"Consent ordering: entry held at issuance, p50 / p99 (a consent change per {1 / share:.0f} carts)",
                     f"≤ {order['hold_p50_ms_at_most']:g} / ≤ {order['hold_p99_ms_at_most']:g} ms",
                     f"{order['held_share']:.1%} of {order['entries']:,} entries held", "", ""),
                    ("Consent ordering: consent marks read per segmentation batch, p50 / p99",
                     f"≤ {order['marks_read_p50_ms_at_most']:g} / ≤ {order['marks_read_p99_ms_at_most']:g} ms", "", "", "")]
    seg = r.get("segmentation", {})
    if seg:
        out.append(("Segmentation events/s, one worker (carts, each a trigger)", num(seg.get("worker_events_per_s"), "/s"),
                    num(seg.get("raw_aiokafka_consume_per_s"), "/s aiokafka consume"), ratio(seg.get("worker_events_per_s"),
                                                                                            seg.get("raw_aiokafka_consume_per_s")),
                    verdict(seg.get("worker_events_per_s"), ">= 5000")))
    iss = r.get("issuance", {})
    if iss:
        out += [("Issuance vouchers/s (segment-entered → voucher-issued)", num(iss.get("vouchers_per_s"), "/s"),
                 num(iss.get("raw_postgres_insert_rows_per_s"), " rows/s PG inserts"),
                 ratio(iss.get("vouchers_per_s"), iss.get("raw_postgres_insert_rows_per_s")),
                 verdict(iss.get("vouchers_per_s"), ">= 2000")),
                (f"Issuance p99 at {iss.get('paced_rate_per_s', 0):,} events/s", num(iss.get("p99_ms"), " ms"), "", "",
                 verdict(iss.get("p99_ms"), "< 250"))]
    if co:
        h, v, rd = co["trivial_endpoint_at_rate"], co["validate_at_rate"], co["redeem_at_rate"]
        at = f"at {v['offered_per_s']:,} req/s"
        out += [(f"Validate p50 {at}", num(v["p50_ms"], " ms"), num(h["p50_ms"], " ms /healthz"), ratio(v["p50_ms"], h["p50_ms"]), ""),
                (f"**Validate p99 {at}**", num(v["p99_ms"], " ms"), num(h["p99_ms"], " ms /healthz"),
                 ratio(v["p99_ms"], h["p99_ms"]), verdict(v["p99_ms"], "< 15")),
                (f"Redeem p50 {at}", num(rd["p50_ms"], " ms"), num(co["raw_postgres_update_at_rate"]["latency_avg_ms"], " ms pgbench avg"),
                 ratio(rd["p50_ms"], co["raw_postgres_update_at_rate"]["latency_avg_ms"]), ""),
                (f"**Redeem p99 {at}**", num(rd["p99_ms"], " ms"), num(h["p99_ms"], " ms /healthz"),
                 ratio(rd["p99_ms"], h["p99_ms"]), verdict(rd["p99_ms"], "< 40")),
                ]
        for name, route in (("validate", "voucherify_validate_at_rate"), ("redeem", "voucherify_redeem_at_rate")):
            if route in co:
                vf = co[route]
                out.append((f"{name.capitalize()} p50 / p99 {at}, Voucherify SDK routes",
                            f"{num(vf['p50_ms'], '')} / {num(vf['p99_ms'], ' ms')}",
                            num((v if name == "validate" else rd)["p99_ms"], " ms p99 native"),
                            ratio(vf["p99_ms"], (v if name == "validate" else rd)["p99_ms"]),
                            verdict(vf["p99_ms"], "< 15" if name == "validate" else "< 40")))
        out += [("Validate maximum rate", num(co["validate_max"]["throughput_per_s"], "/s"),
                 num(co["trivial_endpoint_max"]["throughput_per_s"], "/s /healthz"), ratio(co["validate_max"]["throughput_per_s"],
                                                                                       co["trivial_endpoint_max"]["throughput_per_s"]), ""),
                ("Redeem maximum rate (one campaign)", num(co["redeem_max"]["throughput_per_s"], "/s"),
                 num(co["raw_postgres_hot_row_update_max"]["tps"], " tps hot row"),
                 ratio(co["redeem_max"]["throughput_per_s"], co["raw_postgres_hot_row_update_max"]["tps"]), ""),
                ("Partner code generation", num(co.get("partner_codes", {}).get("per_s"), " codes/s"),
                 num(lim.get("raw_postgres_insert_rows_per_s"), " rows/s PG inserts"),
                 ratio(co.get("partner_codes", {}).get("per_s"), lim.get("raw_postgres_insert_rows_per_s")),
                 verdict(co.get("partner_codes", {}).get("per_s"), ">= 1667"))]
    cs = r.get("checkout_stack", {})
    if cs:
        h = cs["trivial_endpoint_at_rate"]
        for what, native, vf, target in (("Validate", "validate_at_rate", "voucherify_validate_at_rate", "< 15"),
                                          ("Redeem", "redeem_at_rate", "voucherify_redeem_at_rate", "< 40")):
            at = f"at {cs[native]['offered_per_s']:,} req/s"
            out += [(f"**{what} p99 {at} beside the whole stack** (`make run`), native routes",
                     num(cs[native]["p99_ms"], " ms"), num(h["p99_ms"], " ms /healthz"),
                     ratio(cs[native]["p99_ms"], h["p99_ms"]), verdict(cs[native]["p99_ms"], target)),
                    (f"**{what} p99 {at} beside the whole stack**, Voucherify SDK routes", num(cs[vf]["p99_ms"], " ms"),
                     num(h["p99_ms"], " ms /healthz"), ratio(cs[vf]["p99_ms"], h["p99_ms"]),
                     verdict(cs[vf]["p99_ms"], target))]
        if cs.get("broker_age_s") is not None:  # a broker minutes old still compiles (docs/benchmarks.md)
            out.append(("Beside the whole stack: the local broker's age when the checkout ended",
                        num(round(cs["broker_age_s"] / 60, 1), " min"), "", "", ""))
    con = r.get("consent", {})
    if con:
        out.append(("Consent propagation p99 (change → consent-state)", num(con.get("p99_ms"), " ms"), "", "",
                    verdict(con.get("p99_ms"), "< 200")))
    fr = r.get("freshness", {})
    if fr:
        out.append(("Counter freshness p99 (redemption → budget-counters)", num(fr.get("to_budget_counters_p99_ms"), " ms"),
                    "", "", verdict(fr.get("to_budget_counters_p99_ms"), "< 1000")))
        out.append(("Counter freshness p99 (redemption → /metrics)", num(fr.get("to_metrics_p99_ms"), " ms"),
                    "", "", verdict(fr.get("to_metrics_p99_ms"), "< 1000")))
    cn = r.get("counts", {})
    if cn:
        out.append((f"Reading a campaign's counters ({cn['vouchers_of_the_campaign']:,} vouchers; every campaign's, "
                    "every interval)", num(cn.get("kept_ms"), " ms"), num(cn.get("recounted_ms"), " ms recounted"),
                    ratio(cn.get("kept_ms"), cn.get("recounted_ms")), ""))
    rb = r.get("redeem_batch", {})
    if rb:
        five = rb.get("batch_5", {})
        out.append(("Redemption writer's statement, a batch of 5 (idle database): per call / per redemption",
                    f"{num(five.get('ms_per_call'), ' ms')} / {num(five.get('ms_per_redemption'), ' ms')}",
                    num(rb.get("floor_ms"), " ms a logged one-row INSERT"), ratio(five.get("ms_per_call"), rb.get("floor_ms")),
                    ""))
    pv = r.get("privacy", {})
    if pv:
        cd, er = pv["codec"], pv["erasure"]
        out += [("Event codec, personal fields sealed (encode + decode, one core)",
                 num(cd["sealed"]["round_trip_per_s"], " events/s"), num(cd["clear"]["round_trip_per_s"], " events/s in clear"),
                 ratio(cd["sealed"]["round_trip_per_s"], cd["clear"]["round_trip_per_s"]), ""),
                (f"**{er['erasures']} concurrent erasures under {er['load_carts_per_s']} carts/s: p50 / p99 to completed**",
                 f"{num(er['p50_ms'], ' ms')} / {num(er['p99_ms'], ' ms')}", "", "", verdict(er["p99_ms"], "< 60000")),
                ("Budget invariant through the erasures (spent unchanged, reserved = active vouchers)",
                 "holds" if er["budget"]["invariant_holds"] else "**broken**", "", "", "")]
    two, twelve = r.get("pipeline_2_workers", {}), r.get("pipeline_12_partitions", {})
    if two and pipe:
        out.append(("End to end with 2 workers per service", num(two.get("events_per_s_end_to_end"), "/s"),
                    num(pipe.get("events_per_s_end_to_end"), "/s with 1"),
                    ratio(two.get("events_per_s_end_to_end"), pipe.get("events_per_s_end_to_end")), ""))
    if twelve and pipe:
        out.append(("End to end with 12 partitions", num(twelve.get("events_per_s_end_to_end"), "/s"),
                    num(pipe.get("events_per_s_end_to_end"), "/s with 6"),
                    ratio(twelve.get("events_per_s_end_to_end"), pipe.get("events_per_s_end_to_end")), ""))
    secured = r.get("pipeline_cluster", {})
    if secured and pipe:
        out.append(("End to end on the secured cluster (3 brokers, SASL_SSL, 3 replicas, min.insync 2)",
                    num(secured.get("events_per_s_end_to_end"), "/s"),
                    num(pipe.get("events_per_s_end_to_end"), "/s on 1 plaintext broker"),
                    ratio(secured.get("events_per_s_end_to_end"), pipe.get("events_per_s_end_to_end")), ""))
    mem = r.get("memory", {})
    if mem:
        for s in ("consent", "segmentation", "issuance", "analytics"):
            out.append((f"Memory of {s} after {mem['events']:,} events", num(mem["rss_mb_at_end"][s], " MB"),
                        num(mem["rss_mb_at_start"][s], " MB at start"), ratio(mem["rss_mb_at_end"][s], mem["rss_mb_at_start"][s]),
                        f"{mem['growth_mb_per_100k_events'][s]:+.1f} MB per 100k events"))
    return out


def markdown(r: dict, command: str) -> str:
    lines = [f"Measured {r['_measured']} on this machine ({os.cpu_count()} cores) with `{command}` "
             f"in {r['_seconds'] / 60:.1f} minutes.", "",
             "| figure | value | limit on this machine, same run | ratio | target |", "|---|---:|---:|---:|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows(r)]
    return "\n".join(lines) + "\n"


def where_the_time_goes(r: dict) -> str:
    pipe = r.get("pipeline", {})
    lines = paced_cost(pipe)
    prof = pipe.get("profile")
    if not prof:
        return "\n".join(lines) + "\n" if lines else ""
    lines += ["", "Where the time goes while the pipeline is saturated (py-spy, each service's own time by function,",
              "top 6):", ""]
    for s, p in prof.items():
        if "top_self" not in p:
            continue
        tops = "; ".join(f"`{t['function']}` {t['share'] * 100:.0f} %" for t in p["top_self"])
        lines.append(f"- **{s}** ({p['samples']} samples): {tops}")
    return "\n".join(lines) + "\n"


def paced_cost(pipe: dict) -> list[str]:
    """The paced phase's machine: cores used per process and each service's batches."""
    cores, loops = pipe.get("cores_used_paced"), pipe.get("services_paced")
    if not cores or not loops:
        return []
    rate = pipe.get("paced_rate_per_s", 0)
    used = "; ".join(f"{g} {c:.2f}" for g, c in sorted(cores.items(), key=lambda kv: -kv[1]) if c >= 0.01)
    lines = ["", f"The machine at {rate:,} carts/s (the paced phase): cores used, of {os.cpu_count()}, "
             f"{sum(cores.values()):.2f} in all — {used}.", ""]
    for s, v in loops.items():
        if v["batches"]:
            lines.append(f"- **{s}**: {v['batches']:,} batches of {v['messages_per_batch']:g} records, "
                         f"{v['batch_ms']:g} ms each, handling {v['handling_share']:.0%} of the time; "
                         f"outbox rows waited ≤ {v['outbox_delay_p50_ms_at_most']:g} / "
                         f"≤ {v['outbox_delay_p99_ms_at_most']:g} ms (p50 / p99)")
    return lines


def replace_block(path: Path, text: str, tag: str = "BENCH-TABLE") -> None:
    begin, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    doc = path.read_text()
    if begin not in doc:
        raise SystemExit(f"{path} has no {begin} block")
    head, _, rest = doc.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n{text}{end}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves every step works (make bench-smoke)")
    parser.add_argument("--only", default="", help="comma-separated steps: " + ",".join(STEPS))
    parser.add_argument("--json", type=Path, default=None, help="where the results go (default bench/results/latest.json)")
    parser.add_argument("--write-docs", action="store_true", help="put the table into docs/benchmarks.md and README.md")
    args = parser.parse_args()
    steps = [s for s in (args.only.split(",") if args.only else STEPS) if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    out = args.json or ROOT / "bench/results" / ("smoke.json" if args.smoke else "latest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    logdir = ROOT / ".local" / "bench" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    logdir.mkdir(parents=True, exist_ok=True)
    print(f"[bench] {len(steps)} steps; logs in {logdir}", flush=True)
    t0 = time.perf_counter()
    results: dict = {"_measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "_smoke": args.smoke}
    failed = []
    for name in steps:
        try:
            results[name] = run_step(name, args.smoke, logdir)
        except Exception as exc:
            print(f"[bench] {name}: FAILED: {exc}", flush=True)
            failed.append(name)
    results["_seconds"] = round(time.perf_counter() - t0, 1)
    results["_failed"] = failed
    out.write_text(json.dumps(results, indent=2) + "\n")
    command = "make bench-smoke" if args.smoke else "make bench"
    table = markdown(results, command)
    print()
    print(table + where_the_time_goes(results))
    print(f"[bench] results in {out}; {len(failed)} step(s) failed {failed if failed else ''}")
    if args.write_docs and not failed:
        replace_block(ROOT / "docs/benchmarks.md", table + where_the_time_goes(results))
        replace_block(ROOT / "README.md", table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
