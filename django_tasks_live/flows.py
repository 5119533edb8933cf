"""Chains and groups: what a parent run does when one of its children ends.

Pure logic, no queries. A flow is a parent ``Run`` (kind ``chain`` or ``group``, status
``running`` while its children work, never claimed by a worker) whose ``kwargs`` hold
the plan: the children to create, as ``NewRun`` fields. :mod:`store` calls
:func:`decide` in the transaction that ends a child, under the parent's row lock, and
applies the decision there, so a flow advances exactly once per child outcome, however
many workers end children at the same moment.

- chain: children run one after another; each gets the previous result as its first
  positional argument; the last result is the chain's result.
- group: children run in parallel; the join (``then``) gets the list of their results
  (in call order) as its first argument; without a join the list is the result.
- a child that fails or times out fails the parent (the error names the flow, the
  child's task and its place); a canceled child cancels it. Unfinished siblings are
  canceled, later chain steps never start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .states import TERMINAL, Status

CHAIN, GROUP = "chain", "group"
KINDS = frozenset({CHAIN, GROUP})
# The NewRun fields a plan keeps per child (JSON).
PLAN_FIELDS = ("task_name", "kind", "backend", "args", "kwargs", "queue", "priority",
               "timeout", "max_attempts", "steps", "labels", "owner_id")
_STEP_STATE = {Status.COMPLETED: "done", Status.FAILED: "failed", Status.TIMED_OUT: "failed",
               Status.CANCELED: "canceled", Status.RUNNING: "running",
               Status.CANCEL_REQUESTED: "running", Status.SKIPPED: "skipped"}


@dataclass(frozen=True)
class Child:
    """What :func:`decide` needs of one child run."""

    id: int
    position: int
    task: str
    status: str
    result: Any = None
    error: str = ""


@dataclass
class Decision:
    """What to write: new children (position, plan entry, arguments put first), the
    parent's stepper and progress, its terminal move if any, children to cancel."""

    create: list[tuple[int, dict[str, Any], list[Any]]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    percent: float = 0.0
    message: str = ""
    finish: Status | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    cancel: list[int] = field(default_factory=list)


def plan(kind: str, calls: list[dict[str, Any]], then: dict[str, Any] | None) -> dict[str, Any]:
    """The parent's ``kwargs``: its kind, its children's entries, a group's join."""
    return {"flow": kind, "calls": calls, "then": then}


def entries(flow_plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every child entry in position order (a group's join last)."""
    calls = list(flow_plan["calls"])
    return [*calls, flow_plan["then"]] if flow_plan.get("then") else calls


def first_children(flow_plan: dict[str, Any]) -> list[tuple[int, dict[str, Any], list[Any]]]:
    """The children created with the parent: a chain's first, every member of a group."""
    calls = flow_plan["calls"]
    if flow_plan["flow"] == CHAIN:
        return [(0, calls[0], [])]
    return [(i, call, []) for i, call in enumerate(calls)]


def stepper(flow_plan: dict[str, Any], children: list[Child], ended: bool = False) -> list[dict[str, Any]]:
    """The parent's steps: one per child, in position order, with the child's state
    (``pending`` until it exists; ``canceled`` if the flow ended before it began)."""
    by_position = {child.position: child for child in children}
    steps = []
    for i, entry in enumerate(entries(flow_plan)):
        child = by_position.get(i)
        if child is None:
            state = "canceled" if ended else "pending"
        else:
            state = _STEP_STATE.get(child.status, "pending")
        step = {"name": f"{i + 1}. {entry['task_name']}", "weight": 1.0, "state": state}
        if child is not None:
            step["run"] = child.id
        steps.append(step)
    return steps


def decide(name: str, parent_id: int, flow_plan: dict[str, Any], children: list[Child]) -> Decision:
    """What the flow does now that some of its ``children`` (all of them, as committed
    or written in this transaction) may have ended."""
    kind = flow_plan["flow"]
    calls = flow_plan["calls"]
    total = len(entries(flow_plan))
    by_position = {child.position: child for child in children}
    decision = Decision()
    bad = sorted((c for c in children if c.status in TERMINAL and c.status != Status.COMPLETED),
                 key=lambda c: c.position)
    if bad:
        child = bad[0]
        what = "Chain" if kind == CHAIN else "Group"
        ended = "was canceled" if child.status == Status.CANCELED else child.status.replace("_", " ")
        message = (f"{what} {name!r} (run {parent_id}) stopped at step {child.position + 1} of "
                   f"{total}: task {child.task!r} (run {child.id}) {ended}")
        if child.error:
            message += f": {child.error}"
        decision.finish = Status.CANCELED if child.status == Status.CANCELED else Status.FAILED
        decision.fields = {"error": message[:2000], "error_type": f"{what}Failed"}
        decision.cancel = [c.id for c in children if c.status not in TERMINAL]
    elif kind == CHAIN:
        done = [c for c in children if c.status == Status.COMPLETED]
        last = max(done, key=lambda c: c.position) if done else None
        if last is not None and last.position + 1 == len(calls):
            decision.finish, decision.fields = Status.COMPLETED, {"result": last.result}
        elif last is not None and last.position + 1 not in by_position:
            decision.create.append((last.position + 1, calls[last.position + 1], [last.result]))
    else:
        members = [by_position.get(i) for i in range(len(calls))]
        if all(m is not None and m.status == Status.COMPLETED for m in members):
            results = [m.result for m in members if m is not None]
            join = by_position.get(len(calls))
            if not flow_plan.get("then"):
                decision.finish, decision.fields = Status.COMPLETED, {"result": results}
            elif join is None:
                decision.create.append((len(calls), flow_plan["then"], [results]))
            elif join.status == Status.COMPLETED:
                decision.finish, decision.fields = Status.COMPLETED, {"result": join.result}
    decision.steps = stepper(flow_plan, children, ended=decision.finish is not None)
    completed = sum(step["state"] == "done" for step in decision.steps)
    decision.percent = round(100 * completed / total, 2)
    decision.message = f"{completed} of {total} steps done"
    return decision
