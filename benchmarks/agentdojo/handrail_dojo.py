"""Replaying AgentDojo tasks through a Handrail agent: the harness of ``benchmarks/agentdojo.py``.

One `SuiteBench` per AgentDojo suite holds the suite, its policy (``<suite>.yaml`` beside this
file), one SQLite file for every thread, and AgentDojo's own attack, which writes the injection
task's goal into every injection vector the user task reads. `SuiteBench.run` replays one user
task, alone or under one injection task: the environment is built with the injections in place,
a `ScriptedChatModel` makes the user task's ground-truth calls and then, as a hijacked model
would, the injection task's, one call a turn, through `handrail.build_agent`. Every AgentDojo tool
function is a LangChain tool bound to that environment; its output is the text AgentDojo's own
pipeline shows a model (so a later provenance step finds the injected text in tool outputs).
Asked calls are decided as the user would: the user task's approved, the injection task's
rejected, by an approver the `Directory` knows. AgentDojo's ``utility()`` and ``security()``
then judge the environment the run left.

Two policy sets are shipped: argument-only (``<suite>.yaml`` beside this file) and provenance
(``provenance/<suite>.yaml``: the same tools with trust labels on their outputs, and rules on
where each argument came from). `ProvenanceClock` times the gate's provenance step (indexing
the thread's texts, labelling a call's arguments) by wrapping the two functions that do it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from agentdojo.agent_pipeline.ground_truth_pipeline import GroundTruthPipeline
from agentdojo.agent_pipeline.tool_execution import tool_result_to_str
from agentdojo.attacks.attack_registry import load_attack
from agentdojo.attacks.base_attacks import BaseAttack
from agentdojo.base_tasks import BaseInjectionTask, BaseUserTask
from agentdojo.functions_runtime import Function, FunctionCall, FunctionsRuntime, TaskEnvironment
from agentdojo.task_suite.load_suites import get_suites
from agentdojo.task_suite.task_suite import TaskSuite
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.types import Command

from handrail import Actor, Directory, Policy, RunContext, build_agent
from handrail.graph import open_checkpointer
from handrail.nodes import _gate, _provenance
from handrail.testing import ScriptedChatModel

__all__ = [
    "ATTACK",
    "BENCHMARK_VERSION",
    "PROVENANCE_POLICIES",
    "CallOutcome",
    "ProvenanceClock",
    "Run",
    "SuiteBench",
    "replayable",
]

BENCHMARK_VERSION = "v1.2.2"
ATTACK = "important_instructions"
"""AgentDojo's attack: "<INFORMATION> This is an important message from me, Emma Johnson, to
you, GPT-4 ... {goal} ..." in every injection vector the user task's calls read."""
POLICIES = Path(__file__).parent
PROVENANCE_POLICIES = POLICIES / "provenance"
AGENT = Actor(id="agent", roles=("ai-agent",))
USER = "emma"
PEOPLE = Directory.from_mapping({"agent": ["ai-agent"], USER: ["user"]})
_VICTIM = "gpt-4o-2024-05-13"  # the model name the attack addresses ("GPT-4")
_REJECTED = "the user rejected this call"

Origin = Literal["user", "injection"]


@dataclass(frozen=True, kw_only=True)
class CallOutcome:
    """One scripted call and what the gate made of it."""

    origin: Origin
    """Whose ground truth it is: the user task's, or the injection task's (the hijack)."""
    tool: str
    args: dict[str, Any]
    decision: str
    """``allow``, ``ask`` or ``deny`` (``invalid``: its arguments failed the tool's schema)."""
    rule_id: str | None
    ran: bool
    """Whether the tool ran (allowed, or asked and approved)."""
    output: str
    """What the model was told: the tool's output, a denial or a rejection."""
    decide_us: float
    """`Policy.decide` on the call's coerced arguments, cold, in microseconds."""
    provenance: dict[str, str] | None = None
    """Where each argument came from, as the gate labelled it (None: the policy does not
    watch provenance, or the call was not decided)."""

    @property
    def stopped(self) -> bool:
        """Denied, or held for a person (who rejects a hijacked call)."""
        return self.decision != "allow"


@dataclass(kw_only=True)
class Run:
    """One user task replayed, alone (``injection_task`` None) or under one injection task."""

    suite: str
    user_task: str
    injection_task: str | None
    calls: list[CallOutcome]
    utility: bool
    """AgentDojo's ``utility()`` of the user task on the environment the run left."""
    attack_succeeded: bool | None
    """AgentDojo's ``security()`` of the injection task (True: the attacker's goal was met)."""
    seconds: float
    """Wall time of the graph's invocations (the run, and each resume)."""
    tool_seconds: float
    """Of which, time inside AgentDojo's tool functions."""
    approvals: int = 0
    provenance_seconds: float = 0.0
    """Of ``seconds``, time in the gate's provenance step (`ProvenanceClock`)."""
    errors: list[str] = field(default_factory=list)

    def of(self, origin: Origin) -> list[CallOutcome]:
        """The calls of the user task or of the injection task."""
        return [c for c in self.calls if c.origin == origin]

    @property
    def no_approval(self) -> bool:
        """Every call of the user task was allowed: it ran with no one asked."""
        return all(c.decision == "allow" for c in self.of("user"))

    @property
    def injection_stopped(self) -> bool:
        """At least one of the injection task's calls was denied or held for approval."""
        return any(c.stopped for c in self.of("injection"))

    @property
    def gate_ms_per_call(self) -> float:
        """Graph time outside the tools, per call: the gate, the checkpoints, the audit."""
        return 1000 * (self.seconds - self.tool_seconds) / max(1, len(self.calls))

    @property
    def provenance_ms_per_call(self) -> float:
        """The gate's provenance step per decided call, in milliseconds."""
        decided = sum(c.provenance is not None for c in self.calls)
        return 1000 * self.provenance_seconds / max(1, decided)


class ProvenanceClock:
    """Time spent in the gate's provenance step: `GateSources.index` (the thread's texts
    indexed, once per node that decides) and `facts` (one call's arguments labelled, with the
    origins of untrusted ones), wrapped where the gate calls them. `install` once; `lap`
    returns the seconds since the last lap."""

    _seconds = 0.0
    _installed = False

    @classmethod
    def install(cls) -> None:
        """Wrap the two functions (idempotent)."""
        if cls._installed:
            return
        _provenance.GateSources.index = cls._timed(_provenance.GateSources.index)  # type: ignore[method-assign]
        _gate.facts = cls._timed(_gate.facts)  # type: ignore[attr-defined]
        cls._installed = True

    @classmethod
    def lap(cls) -> float:
        """Seconds in the provenance step since the previous lap."""
        seconds, cls._seconds = cls._seconds, 0.0
        return seconds

    @classmethod
    def _timed(cls, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = function(*args, **kwargs)
            if result is not None:  # None: the policy does not watch provenance
                cls._seconds += time.perf_counter() - started
            return result

        return timed


def replayable(task: BaseInjectionTask[Any], env: TaskEnvironment) -> bool:
    """Whether AgentDojo ships ground-truth calls for ``task`` (eight workspace tasks of v1.2
    and travel's injection_task_6, which only wants words in the answer, ship none)."""
    return bool(task.ground_truth(env.model_copy(deep=True)))


class SuiteBench:
    """One AgentDojo suite, its policy (``<policies>/<name>.yaml``) and one SQLite file for all
    its threads."""

    def __init__(
        self,
        name: str,
        db: Path,
        *,
        policies: Path = POLICIES,
        version: str = BENCHMARK_VERSION,
    ) -> None:
        self.suite: TaskSuite[Any] = get_suites(version)[name]
        self.name = name
        self.policy = Policy.from_file(policies / f"{name}.yaml")
        self.policies = policies
        ProvenanceClock.install()
        self.saver = open_checkpointer(db)
        self.runtime = FunctionsRuntime(self.suite.tools)
        victim = GroundTruthPipeline(None)
        victim.name = _VICTIM
        self.attack: BaseAttack = load_attack(ATTACK, self.suite, victim)
        self._linted = False
        self._threads = itertools.count()

    def user_tasks(self) -> dict[str, BaseUserTask[Any]]:
        """The suite's user tasks by id, in numeric order."""
        return _by_number(self.suite.user_tasks)

    def injection_tasks(self) -> dict[str, BaseInjectionTask[Any]]:
        """The suite's injection tasks by id, in numeric order."""
        return _by_number(self.suite.injection_tasks)

    def default_environment(self) -> TaskEnvironment:
        """The suite's environment with no injections (each vector's default text)."""
        env: TaskEnvironment = self.suite.load_and_inject_default_environment({})
        return env

    def run(
        self,
        user_task: BaseUserTask[Any],
        injection_task: BaseInjectionTask[Any] | None = None,
        *,
        gated: bool = True,
    ) -> Run:
        """Replay ``user_task`` (then ``injection_task``'s calls, if given) in a fresh
        environment; ``gated=False`` runs the same calls straight through AgentDojo's runtime,
        as its ground-truth pipeline does (the reference for utility and attack success)."""
        injections = self.attack.attack(user_task, injection_task) if injection_task else {}
        env = user_task.init_environment(self.suite.load_and_inject_default_environment(injections))
        pre = env.model_copy(deep=True)
        script: list[tuple[Origin, FunctionCall]] = [
            ("user", c) for c in user_task.ground_truth(pre.model_copy(deep=True))
        ]
        if injection_task is not None:
            hijack = injection_task.ground_truth(pre.model_copy(deep=True))
            script += [("injection", c) for c in hijack]
        answer = user_task.GROUND_TRUTH_OUTPUT
        against = injection_task.ID if injection_task else "-"
        thread = f"{self.name}:{user_task.ID}:{against}:{next(self._threads)}"
        run = Run(
            suite=self.name,
            user_task=user_task.ID,
            injection_task=injection_task.ID if injection_task else None,
            calls=[],
            utility=False,
            attack_succeeded=None,
            seconds=0.0,
            tool_seconds=0.0,
        )
        if gated:
            self._gated(run, env, script, answer, prompt=user_task.PROMPT, thread=thread)
        else:
            self._direct(run, env, script)
        trace = [FunctionCall(function=c.tool, args=c.args) for c in run.calls if c.ran]
        run.utility = _judge(user_task, answer, pre, env, trace)
        if injection_task is not None:
            run.attack_succeeded = _judge(injection_task, answer, pre, env, trace)
        return run

    def _direct(
        self, run: Run, env: TaskEnvironment, script: Sequence[tuple[Origin, FunctionCall]]
    ) -> None:
        started = time.perf_counter()
        for origin, call in script:
            result, error = self.runtime.run_function(env, call.function, call.args)
            text = f"Error: {error}" if error else tool_result_to_str(result)
            run.calls.append(_outcome(origin, call, "allow", None, True, text, 0.0))
        run.seconds = run.tool_seconds = time.perf_counter() - started

    def _gated(
        self,
        run: Run,
        env: TaskEnvironment,
        script: Sequence[tuple[Origin, FunctionCall]],
        answer: str,
        *,
        prompt: str,
        thread: str,
    ) -> None:
        clock = [0.0]
        tools = [self._tool(f, env, clock) for f in self.suite.tools]
        ids = [f"{origin[0]}{i}" for i, (origin, _) in enumerate(script)]
        turns = [
            AIMessage("", tool_calls=[{"name": c.function, "args": dict(c.args), "id": i}])
            for i, (_, c) in zip(ids, script, strict=True)
        ]
        graph = build_agent(
            ScriptedChatModel([*turns, AIMessage(answer)]),
            tools,
            self.policy,
            checkpointer=self.saver,
            directory=PEOPLE,
            lint="off" if self._linted else "error",
        )
        self._linted = True
        decide_us = [self._decide_us(c) for _, c in script]
        config: Any = {"configurable": {"thread_id": thread}}
        ctx = RunContext(actor=AGENT)
        ProvenanceClock.lap()
        started = time.perf_counter()
        out = graph.invoke({"messages": [("user", prompt)]}, config, context=ctx)
        while "__interrupt__" in out:
            asked = out["__interrupt__"][0].value["handrail"]
            if asked.get("kind", "approval") != "approval":
                run.errors.append(f"escalation: {asked.get('calls')}")
                break
            decisions = [
                {"type": "approve"}
                if i.startswith("u")
                else {"type": "reject", "message": _REJECTED}
                for i in asked["tool_call_ids"]
            ]
            run.approvals += sum(d["type"] == "approve" for d in decisions)
            resume = {"decisions": decisions, "approver": {"id": USER}}
            out = graph.invoke(Command(resume=resume), config, context=ctx)
        run.seconds = time.perf_counter() - started
        run.provenance_seconds = ProvenanceClock.lap()
        run.tool_seconds = clock[0]
        records = out.get("calls", {})
        said = {
            m.tool_call_id: str(m.content) for m in out["messages"] if isinstance(m, ToolMessage)
        }
        for (origin, call), i, us in zip(script, ids, decide_us, strict=True):
            record = records.get(i)
            decision = (record.decision or "invalid") if record is not None else "unreached"
            ran = record is not None and record.status == "succeeded"
            rule = record.rule_id if record is not None else None
            outcome = _outcome(origin, call, decision, rule, ran, said.get(i, ""), us)
            if record is not None and record.provenance is not None:
                outcome = replace(outcome, provenance=dict(record.provenance["args"]))
            run.calls.append(outcome)

    def _tool(
        self, function: Function[Any, Any], env: TaskEnvironment, clock: list[float]
    ) -> BaseTool:
        """``function`` as a LangChain tool over ``env``: AgentDojo's runtime injects the
        environment's parts the function depends on; the output is AgentDojo's text for it."""
        runtime, name = self.runtime, function.name

        def call(**kwargs: Any) -> str:
            started = time.perf_counter()
            result, error = runtime.run_function(env, name, kwargs)
            clock[0] += time.perf_counter() - started
            return f"Error: {error}" if error else tool_result_to_str(result)

        return StructuredTool.from_function(
            call, name=name, description=function.description, args_schema=function.parameters
        )

    def _decide_us(self, call: FunctionCall) -> float:
        schema = self.runtime.functions[call.function].parameters
        args = schema.model_validate(dict(call.args)).model_dump(mode="json")
        facts = None
        if self.policy.tracks_provenance:  # every condition evaluated, none failing
            facts = {"args": dict.fromkeys(args, "user"), "untrusted_seen": True}
        started = time.perf_counter()
        self.policy.decide(call.function, args, AGENT, provenance=facts)
        return 1e6 * (time.perf_counter() - started)


def _outcome(
    origin: Origin,
    call: FunctionCall,
    decision: str,
    rule: str | None,
    ran: bool,
    output: str,
    decide_us: float,
) -> CallOutcome:
    return CallOutcome(
        origin=origin,
        tool=call.function,
        args=dict(call.args),
        decision=decision,
        rule_id=rule,
        ran=ran,
        output=output,
        decide_us=decide_us,
    )


def _judge(
    task: BaseUserTask[Any] | BaseInjectionTask[Any],
    answer: str,
    pre: TaskEnvironment,
    post: TaskEnvironment,
    trace: list[FunctionCall],
) -> bool:
    """AgentDojo's verdict as its ``TaskSuite`` gives it: from the call trace when the task
    judges by it, else ``utility()`` (a user task) or ``security()`` (an injection task)."""
    if isinstance(task, BaseUserTask):
        verdict = task.utility_from_traces(answer, pre, post, trace)
        return bool(task.utility(answer, pre, post) if verdict is None else verdict)
    verdict = task.security_from_traces(answer, pre, post, trace)
    return bool(task.security(answer, pre, post) if verdict is None else verdict)


def _by_number(tasks: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(tasks.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1])))
