"""The chaos run's figures for a scenario (:func:`figures`), its targets with PASS/FAIL
(:func:`targets`), the text ``make chaos`` prints (:func:`describe`, :func:`summary`), and
the answers per second through a scenario (:func:`throughput`, the run's plot)."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass

from tests.chaos.config import BUDGET, RECOVERY_TARGET
from tests.chaos.load import Answer
from tests.chaos.run import Outcome

#: The labels of a read answered 2xx (X-Resilience-Fallback; none is fresh).
LABELS = ("fresh", "stale", "replica", "degraded")
#: Share of reads that must be answered while the fault lasts.
READS_ANSWERED = 0.999


@dataclass(frozen=True)
class Target:
    name: str
    wanted: str
    measured: str
    ok: bool


def documented(answer: Answer) -> bool:
    """Answered, or refused as the docs say: 429 or 503, with Retry-After."""
    return 200 <= answer.status < 300 or (answer.status in (429, 503) and answer.retry_after)


#: 5xx answers the API documents (docs/provider.md): a problem with a stable code.
DOCUMENTED_5XX = (503, 504)


def server_errors(answers: list[Answer]) -> int:
    """Answers 500, or another 5xx the API does not document: a 500 by any other name."""
    return sum(1 for a in answers if a.status >= 500 and a.status not in DOCUMENTED_5XX)


def reads(answers: list[Answer]) -> list[Answer]:
    """Reads the limiter let through (a 429 is the client's budget, not availability)."""
    return [a for a in answers if a.kind == "read" and a.status != 429]


def answered(answers: list[Answer]) -> float:
    served = reads(answers)
    return sum(1 for a in served if 200 <= a.status < 300) / len(served) if served else 1.0


def during(outcome: Outcome) -> list[Answer]:
    return [a for a in outcome.record.answers
            if outcome.fault_at <= a.started < outcome.restored_at]


#: What became of a request, for the throughput plot: answered (fresh, or a write applied or
#: queued), answered from a fallback (a read labelled stale, replica or degraded), refused as
#: documented (429, 503, 504), failed (no answer, or any other status).
OUTCOMES = ("answered", "from fallback", "refused (429/503/504)", "failed")


def outcome_of(answer: Answer) -> int:
    """The index in :data:`OUTCOMES` of what became of ``answer``."""
    if 200 <= answer.status < 300:
        return 1 if answer.label not in ("", "fresh") else 0
    return 2 if answer.status in (429, *DOCUMENTED_5XX) else 3


def throughput(outcome: Outcome, width: float = 1.0) -> tuple[float, list[list[int]]]:
    """Answers per slot of ``width`` seconds by when they came (:data:`OUTCOMES` each), from
    the first answer's slot to the last's; with the first slot's start in seconds from the
    fault's beginning."""
    ends = [(a.started + a.seconds - outcome.fault_at, outcome_of(a))
            for a in outcome.record.answers]
    if not ends:
        return 0.0, []
    first = min(math.floor(at / width) for at, _ in ends)
    slots = [[0] * len(OUTCOMES) for _ in range(max(math.floor(at / width) for at, _ in ends)
                                                 - first + 1)]
    for at, kind in ends:
        slots[math.floor(at / width) - first][kind] += 1
    return first * width, slots


def percentile(values: list[float], share: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=1000, method="inclusive")[round(share * 1000) - 1]


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def targets(outcome: Outcome) -> list[Target]:
    fault = during(outcome)
    alerts = outcome.alerts
    recovered = outcome.recovered_after
    return [
        Target("reads answered during the fault", f">= {READS_ANSWERED:.1%}",
               f"{answered(fault):.2%} of {len(reads(fault))}",
               answered(fault) >= READS_ANSWERED),
        Target("writes lost", "0", str(outcome.writes.lost), outcome.writes.lost == 0),
        Target("writes applied twice", "0", str(outcome.writes.duplicated),
               outcome.writes.duplicated == 0),
        Target("answers 500", "0", str(server_errors(outcome.record.answers)),
               server_errors(outcome.record.answers) == 0),
        Target("recovery", f"<= {RECOVERY_TARGET:g} s",
               seconds(recovered) if outcome.opened_after is not None else "none opened",
               recovered is not None and recovered <= RECOVERY_TARGET),
        Target("alerts per incident", "1",
               f"{len(alerts.opened)} for {len(alerts.incidents)}", alerts.one_per_incident),
    ]


def describe(outcome: Outcome) -> list[str]:
    """The scenario's figures, a few lines, then its targets."""
    answers = outcome.record.answers
    kinds = Counter(a.kind for a in answers)
    statuses = Counter(a.status for a in answers)
    fault, served = during(outcome), reads(answers)
    labels = Counter(a.label for a in served if 200 <= a.status < 300)
    latencies = [a.seconds for a in answers if a.status]
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    writes, alerts = outcome.writes, outcome.alerts
    refusals = Counter((a.kind, a.status) for a in answers if not 200 <= a.status < 300)
    refused = sum(1 for a in served if a.status == 503 and a.retry_after)
    lines = [
        f"== {outcome.scenario.name}: {outcome.scenario.describe()}"
        + (f", {outcome.killed} workers killed" if outcome.killed else ""),
        f"requests   {len(answers)} ("
        + ", ".join(f"{kind} {kinds[kind]}" for kind in sorted(kinds))
        + f"); {sum(1 for a in answers if a.resent)} sent again (broken connection or 409)",
        "answers    " + "  ".join(f"{status or 'none'}: {n}"
                                  for status, n in sorted(statuses.items())),
        f"reads      answered {answered(fault):.2%} during the fault, "
        f"{answered(answers):.2%} overall; "
        + ", ".join(f"{label} {labels[label] / max(1, len(served)):.1%}" for label in LABELS)
        + f"; 503 with Retry-After {refused}; 429 {statuses[429]}",
        f"latency    p50 {seconds(p50)}, p99 {seconds(p99)}, "
        f"max {seconds(max(latencies, default=0))}"
        f"; call budget {seconds(BUDGET)} (p99 {'within' if p99 <= BUDGET else 'over'} it)",
        "refusals   " + (", ".join(f"{kind} {status or 'none'}: {n}" for (kind, status), n
                                    in sorted(refusals.items())) or "none"),
        f"circuits   opened {seconds(outcome.opened_after)} after the fault; closed for good "
        f"{seconds(outcome.recovered_after)} after the restore; last fallback read "
        f"{seconds(outcome.last_fallback_after)} after it",
        f"writes     acknowledged {writes.acknowledged}, applied {writes.applied}, duplicated "
        f"{writes.duplicated}, lost {writes.lost} (unacknowledged yet applied "
        f"{writes.unacknowledged_applied}; "
        + (f"{outcome.left_for_operator} left for manage.py resilience_replay"
           if outcome.left_for_operator else "all replayed by the workers") + ")",
        f"alerts     {len(alerts.incidents)} incidents, {len(alerts.opened)} open alerts, "
        f"{alerts.recovered} recovery alerts, {alerts.local} local, {alerts.rules} rule alerts, "
        f"{len(alerts.other)} other "
        f"events{': ' if alerts.other else ''}{'; '.join(alerts.other[:3])}",
        "timeline   " + ", ".join(f"{name} {state} {at - outcome.fault_at:+.1f}s"
                                  for at, name, state in outcome.transitions
                                  if at >= outcome.fault_at),
        "targets",
    ]
    lines += [f"  {t.name:34} {t.wanted:>9}  {t.measured:>18}  {'PASS' if t.ok else 'FAIL'}"
              for t in targets(outcome)]
    if writes.lost_keys:
        lines.append(f"lost: {', '.join(writes.lost_keys[:10])}")
    return lines


def summary(outcomes: list[Outcome]) -> list[str]:
    """One Markdown table row per scenario: each target's measure and verdict."""
    names = [t.name for t in targets(outcomes[0])] if outcomes else []
    figures = ["stale reads", "p50 / p99", "opened after", "writes acknowledged",
               "left for replay"]
    lines = ["| scenario | " + " | ".join(figures + names) + " |",
             "|---|" + "---|" * (len(figures) + len(names))]
    for outcome in outcomes:
        served = [a for a in reads(outcome.record.answers) if 200 <= a.status < 300]
        latencies = [a.seconds for a in outcome.record.answers if a.status]
        cells = [f"{sum(1 for a in served if a.label != 'fresh') / max(1, len(served)):.1%}",
                 f"{seconds(percentile(latencies, 0.5))} / {seconds(percentile(latencies, 0.99))}",
                 seconds(outcome.opened_after), str(outcome.writes.acknowledged),
                 str(outcome.left_for_operator)]
        cells += [f"{t.measured} {'PASS' if t.ok else 'FAIL'}" for t in targets(outcome)]
        lines.append(f"| {outcome.scenario.name} | " + " | ".join(cells) + " |")
    return lines


def passed(outcomes: list[Outcome]) -> bool:
    return all(t.ok for outcome in outcomes for t in targets(outcome))
