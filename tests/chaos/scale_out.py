"""The scale-out rehearsal: what KEDA does on Kubernetes, done with processes on this machine.

The shop publishes at a steady rate throughout. Three times, segmentation and issuance are
stopped while it does, so a backlog builds (what makes KEDA act: lag past the chart's
``lagThreshold``); then each comes back with one, two, then three instances — the added ones
joining the consumer group under load, a rebalance each, as pods KEDA adds would — and the time
the backlog takes to drain is measured. At the end every check of the chaos run (no voucher lost
or doubled, the budget invariant, each input once) is held against the ground truth.

    python -m tests.chaos.scale_out --report docs/reliability.md    # make scale-out
    python -m tests.chaos.scale_out --short                         # the make-test version
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.chaos.harness import ROOT, Observer, Plan, Run, Shop, group_offsets, log

SCALED = ("segmentation", "issuance")


class ScaleOut(Run):
    def __init__(self, plan: Plan, workdir: Path, backlog_s: float, instances: int) -> None:
        super().__init__(plan, workdir)
        self.backlog_s, self.instances = backlog_s, instances
        self.phases: list[dict] = []

    async def during_load(self, shop: Shop, observer: Observer) -> None:
        """For 1, 2, 3 instances: stop every instance of segmentation and issuance while the shop
        keeps publishing (a backlog), start one of each, add the others at once — each joining the
        group under load, a rebalance — and time how long the backlog takes to drain."""
        for n in range(1, self.instances + 1):
            await asyncio.gather(*(i.stop() for i in self.fleet.added), *(self.fleet.primary[s].stop() for s in SCALED))
            log(f"phase {n}: {', '.join(SCALED)} stopped for {self.backlog_s:g} s while the shop publishes")
            await asyncio.sleep(self.backlog_s)
            before, t0, cpu0 = await group_offsets(self.kafka, self.prefix), time.monotonic(), cpu_times()
            for s in SCALED:
                await self.fleet.primary[s].start()
            await asyncio.gather(*(self.restarted(self.fleet.primary[s]) for s in SCALED),
                                 *(self.fleet.add(s) for s in SCALED for _ in range(n - 1)))
            joined = time.monotonic() - t0
            backlog = {s: before[s][1] - before[s][0] for s in SCALED}
            after = await self.drained(backlog)
            seconds = time.monotonic() - t0
            phase = {"instances": n, "joined_s": round(joined, 1), "drain_s": round(seconds, 1),
                     "machine_cpu_busy": round(busy_share(cpu0, cpu_times()), 3)}
            for s in SCALED:
                phase[s] = {"backlog": backlog[s], "consumed_per_s": round((after[s][0] - before[s][0]) / seconds),
                            "lag_after": after[s][1] - after[s][0]}
            self.phases.append(phase)
            log(f"  {n} instance(s) each (all ready after {joined:.1f} s): drained in {seconds:.1f} s; " + "; ".join(
                f"{s} backlog {phase[s]['backlog']:,}, {phase[s]['consumed_per_s']:,}/s" for s in SCALED)
                + f"; the machine's CPUs {phase['machine_cpu_busy']:.0%} busy")
        # The last phase's instances stay: the checks see the groups as KEDA left them.

    async def restarted(self, instance) -> None:
        if not await self.fleet.ready_within(instance, 60):
            raise RuntimeError(f"{instance.service} not ready after 60 s; log {instance.log_path}")

    async def drained(self, backlog: dict[str, int], timeout_s: float = 240) -> dict[str, tuple[int, int]]:
        """Offsets once segmentation is back within a second of the shop's rate (the backlog
        gone; issuance's input is what segmentation emits, so it drains with it or just after)."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = await group_offsets(self.kafka, self.prefix)
            lags = {s: now[s][1] - now[s][0] for s in SCALED}
            if all(lags[s] <= max(self.plan.rate, backlog[s] * 0.02) for s in SCALED):
                return now
            if time.monotonic() > deadline:
                log(f"  not drained after {timeout_s:g} s: lags {lags}")
                return now
            await asyncio.sleep(0.5)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def report(result: dict, phases: list[dict], command: str) -> str:
    lines = [f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}`: the shop at "
             f"{result['rate_per_s']:g} events/s for {result['seconds']} s ({sum(result['published'].values()):,} "
             "events); three times segmentation and issuance were stopped while it published, then came back with "
             "1, 2 and 3 instances each (the added ones joining the groups under load).", "",
             "| instances each | all ready after | backlog drained in | segmentation backlog | segmentation consumed "
             "| issuance consumed | the machine's CPUs busy |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for p in phases:
        seg, iss = p["segmentation"], p["issuance"]
        lines.append(f"| {p['instances']} | {p['joined_s']:g} s | {p['drain_s']:g} s | {seg['backlog']:,} | "
                     f"{seg['consumed_per_s']:,}/s | {iss['consumed_per_s']:,}/s | {p['machine_cpu_busy']:.0%} |")
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    for name, c in result["checks"].items():
        if name.startswith("each service recovered"):
            name = "no process exited by itself across the rebalances"
        detail = ", ".join(f"{k} {v}" for k, v in c.items() if k != "ok" and (not isinstance(v, (dict, list)) or v))
        lines.append(f"| {name} | {'pass' if c['ok'] else '**FAIL**'} | {detail} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=400, help="shop events per second")
    parser.add_argument("--backlog", type=float, default=60, help="seconds segmentation and issuance are stopped "
                        "before each phase")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--short", action="store_true", help="the make-test version: about a minute of load")
    parser.add_argument("--report", type=Path, help="write the report into this file's SCALE-OUT-REPORT block")
    parser.add_argument("--json", type=Path, help="write the result and the phases as JSON")
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if args.short:
        args.backlog, args.customers = 15, 150
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    # The load runs until the last phase has drained (minutes 0: nothing after the phases).
    triggers = args.rate * args.instances * (args.backlog + 20) * 0.75 * 0.7
    plan = Plan(minutes=0, rate=args.rate, kills=0, pauses=0, extras=0, broker_restarts=0, pg_restarts=0,
                customers=args.customers, tight_capacity=max(10, int(triggers / 3)), seed=seed)
    workdir = ROOT / ".local" / "chaos" / ("scale-out-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"seed {seed}; ground truth and service logs in {workdir}")
    run = ScaleOut(plan, workdir, args.backlog, args.instances)
    result = asyncio.run(run.go())
    result |= {"seed": seed, "phases": run.phases}
    (workdir / "result.json").write_text(json.dumps(result, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    command = " ".join(["python -m tests.chaos.scale_out"] + sys.argv[1:]) if args.short else "make scale-out"
    text = report(result, run.phases, command)
    print(text)
    if args.report:
        doc = args.report.read_text()
        begin, end = "<!-- SCALE-OUT-REPORT -->", "<!-- /SCALE-OUT-REPORT -->"
        head, found, rest = doc.partition(begin)
        _, _, tail = rest.partition(end)
        args.report.write_text(f"{head}{begin}\n{text}{end}{tail}" if found else f"{doc}\n{begin}\n{text}{end}\n")
    log("PASSED" if result["passed"] else f"FAILED (kept topics {result['prefix']}* and schemas for inspection)")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
