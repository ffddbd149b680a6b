"""Scenarios: what goes wrong in a trial -- a fault, a busy machine, a full cluster, a dead postmaster.

``SCENARIOS`` maps each name to a ``Scenario``; ``get_scenario`` takes a name or a
Scenario.  A scenario says what to inject and what one expects; the truth is still
measured from the event log, by the trial runner (``trials.ground_truth``).
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass

from ...spec import Fault

__all__ = ["Scenario", "SCENARIOS", "get_scenario"]


@dataclass(frozen=True)
class Scenario:
    """What goes wrong in a trial.

    ``fault``: the worker's Fault plan.  ``load``: a load this scenario always runs under
    (``busy``), whatever the grid says.  ``kind``: ``plain``, or ``slot_exhaustion`` (every
    slot is taken before the registration) or ``postmaster_death`` (SIGKILL to the
    postmaster right after the registration, on a cluster of its own).  ``expected``: the
    truth one expects -- the runner still measures it from the events.
    """

    name: str
    description: str
    expected: str
    fault: Fault | None = None
    load: str | None = None
    kind: str = "plain"


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("ok", "nothing goes wrong: the worker starts and signs in", "started"),
    Scenario("fork_failure", "the postmaster's fork() fails with EAGAIN (injected); the "
             "NEVER_RESTART worker is forgotten", "failed", Fault.fork_failure(_errno.EAGAIN)),
    Scenario("early_crash", "the worker exits with code 1 after fork, before user code",
             "failed", Fault.crash_before_main(exit_code=1)),
    Scenario("slow_start", "the worker needs 150 ms between fork and user code, then runs",
             "started", Fault.slow_start(0.15)),
    Scenario("busy", "nothing goes wrong, but the machine is busy: CPU hogs and postmaster "
             "stalls (load 'busy')", "started", load="busy"),
    Scenario("slot_exhaustion", "every worker slot is taken: registration is refused",
             "failed", kind="slot_exhaustion"),
    Scenario("postmaster_death", "the postmaster is killed (SIGKILL) right after the "
             "registration, before it forks", "failed",
             Fault.slow_start(0.5, where="postmaster"), kind="postmaster_death"),
)}


def get_scenario(scenario) -> Scenario:
    if isinstance(scenario, Scenario):
        return scenario
    try:
        return SCENARIOS[scenario]
    except KeyError:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}") from None
