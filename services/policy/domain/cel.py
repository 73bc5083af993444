"""Policy rules in CEL: the environment rules see, compilation at write time, and batch evaluation.

Rules run on Google's C++ CEL runtime (``cel-expr-python``). What a rule can read is declared once in
:data:`RULE_VARIABLES`; the type checker refuses anything else, so ``event.type == 1`` or ``event.nope``
fail when the rule is written, not when the first event arrives.

Variables (all times UTC; :data:`RULE_VARIABLES` is the authoritative list):

- ``event.type`` string, e.g. ``"phishing.clicked"``; ``event.source`` string, e.g. ``"gophish"``
- ``event.severity`` string: ``"LOW"``, ``"MEDIUM"``, ``"HIGH"`` or ``"CRITICAL"``;
  ``event.severity_rank`` int 1..4 for those (0 if unknown), for comparisons such as ``>= 3``
- ``event.occurred_at`` timestamp; ``event.details`` map(string, string) of free-form attributes
- derived: ``event.hour`` int 0..23, ``event.weekday`` int 0 = Monday .. 6 = Sunday,
  ``event.outside_hours`` bool (outside the configured :class:`WorkingHours`)
- subject history: ``subject.events_24h``, ``subject.violations_30d``, ``subject.phishing_clicks_30d``,
  ``subject.phishing_reports_30d`` (int), ``subject.training_overdue`` (bool), and ``subject.facts``
  map(string, double) for further aggregates (CEL does not mix int and double: compare with ``3.0``)

Runaway rules: CEL has no loops or recursion; the rule text is capped at :data:`RULE_MAX_BYTES`, the parser
caps nesting depth, and the runtime caps comprehension iterations per evaluation, so a rule like
``list.all(a, list.all(b, ...))`` over large lists fails with an evaluation error instead of spinning.

Evaluation is batched: the active rules are combined into CEL list expressions of up to ``chunk_size``
rules (one runtime call per chunk instead of one per rule); a chunk whose combined evaluation errors is re-run
rule by rule so the error is attributed to the policy that caused it and the other policies still evaluate.
"""

from __future__ import annotations

import datetime
import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from cel_expr_python import cel

from services.policy.domain.errors import InvalidRuleError, RuleEvaluationError

RULE_MAX_BYTES: Final = 4096

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

EVENT_SEVERITY_RANKS: Final[Mapping[str, int]] = {"LOW": 1, "MEDIUM": 2, "HIGH": 3, "CRITICAL": 4}


@dataclass(frozen=True)
class RuleVariable:
    """One variable a rule may read (also used to document the environment to policy authors)."""

    name: str
    cel_type: str
    description: str


RULE_VARIABLES: Final[tuple[RuleVariable, ...]] = (
    RuleVariable("event.type", "string", "event type, e.g. phishing.clicked"),
    RuleVariable("event.source", "string", "emitting system, e.g. gophish"),
    RuleVariable("event.severity", "string", "LOW, MEDIUM, HIGH or CRITICAL"),
    RuleVariable("event.severity_rank", "int", "1..4 for LOW..CRITICAL, 0 if unknown"),
    RuleVariable("event.occurred_at", "timestamp", "when the event happened"),
    RuleVariable("event.details", "map<string,string>", "free-form event attributes"),
    RuleVariable("event.hour", "int", "hour of occurred_at, 0..23 UTC"),
    RuleVariable("event.weekday", "int", "weekday of occurred_at, 0=Monday..6=Sunday, UTC"),
    RuleVariable("event.outside_hours", "bool", "occurred outside working hours"),
    RuleVariable("subject.events_24h", "int", "the subject's events in the last 24 hours"),
    RuleVariable("subject.violations_30d", "int", "the subject's policy violations in the last 30 days"),
    RuleVariable("subject.phishing_clicks_30d", "int", "phishing links clicked in the last 30 days"),
    RuleVariable("subject.phishing_reports_30d", "int", "phishing mails reported in the last 30 days"),
    RuleVariable("subject.training_overdue", "bool", "mandatory training is past its due date"),
    RuleVariable("subject.facts", "map<string,double>", "further history aggregates by name"),
)


def _cel_type(type_name: str) -> Any:
    simple = {
        "string": cel.Type.STRING,
        "int": cel.Type.INT,
        "bool": cel.Type.BOOL,
        "double": cel.Type.DOUBLE,
        "timestamp": cel.Type.TIMESTAMP,
    }
    if type_name in simple:
        return simple[type_name]
    maps = {
        "map<string,string>": cel.Type.Map(cel.Type.STRING, cel.Type.STRING),
        "map<string,double>": cel.Type.Map(cel.Type.STRING, cel.Type.DOUBLE),
    }
    return maps[type_name]


@functools.cache
def _environment() -> Any:
    """The one CEL environment; built on first use so importing this module has no side effects."""
    return cel.NewEnv(variables={variable.name: _cel_type(variable.cel_type) for variable in RULE_VARIABLES})


# --------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, kw_only=True)
class WorkingHours:
    """Working hours in UTC: ``start_hour <= hour < end_hour`` on one of ``workdays`` (0 = Monday)."""

    start_hour: int = 8
    end_hour: int = 18
    workdays: frozenset[int] = frozenset({0, 1, 2, 3, 4})

    def __post_init__(self) -> None:
        if not 0 <= self.start_hour <= self.end_hour <= 24:
            raise ValueError("working hours need 0 <= start_hour <= end_hour <= 24")
        if not self.workdays <= frozenset(range(7)):
            raise ValueError("workdays are 0 (Monday) .. 6 (Sunday)")

    def contains(self, moment: datetime.datetime) -> bool:
        moment = moment.astimezone(datetime.UTC)
        return moment.weekday() in self.workdays and self.start_hour <= moment.hour < self.end_hour


@dataclass(frozen=True, kw_only=True)
class SubjectFacts:
    """History aggregates of the event's subject, computed by ingest and sent along with the event."""

    events_24h: int = 0
    violations_30d: int = 0
    phishing_clicks_30d: int = 0
    phishing_reports_30d: int = 0
    training_overdue: bool = False
    facts: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class EventFacts:
    """What the rules may know about one event. ``occurred_at`` must be timezone-aware."""

    event_type: str
    source: str
    severity: str
    occurred_at: datetime.datetime
    details: Mapping[str, str] = field(default_factory=dict)
    subject: SubjectFacts = field(default_factory=SubjectFacts)
    event_id: str = ""

    def __post_init__(self) -> None:
        if self.occurred_at.tzinfo is None or self.occurred_at.utcoffset() is None:
            raise ValueError("occurred_at must be timezone-aware")


@dataclass(frozen=True, kw_only=True)
class ActivePolicy:
    """An ACTIVE policy version as the evaluator needs it."""

    name: str
    version: int
    rule: str
    severity: str
    title: str


@dataclass(frozen=True, kw_only=True)
class Violation:
    policy: str
    version: int
    severity: str
    title: str


@dataclass(frozen=True, kw_only=True)
class PolicyEvaluationFailure:
    """A policy that could not be evaluated for an event; recorded, never fatal to the batch."""

    policy: str
    version: int
    message: str


@dataclass(frozen=True, kw_only=True)
class EvaluationResult:
    event_id: str
    violations: tuple[Violation, ...]
    errors: tuple[PolicyEvaluationFailure, ...]


def event_variables(event: EventFacts, *, working_hours: WorkingHours | None = None) -> dict[str, object]:
    """The variable bindings for one event, derived facts included."""
    hours = working_hours or WorkingHours()
    occurred_utc = event.occurred_at.astimezone(datetime.UTC)
    subject = event.subject
    return {
        "event.type": event.event_type,
        "event.source": event.source,
        "event.severity": event.severity,
        "event.severity_rank": EVENT_SEVERITY_RANKS.get(event.severity, 0),
        "event.occurred_at": occurred_utc,
        "event.details": dict(event.details),
        "event.hour": occurred_utc.hour,
        "event.weekday": occurred_utc.weekday(),
        "event.outside_hours": not hours.contains(occurred_utc),
        "subject.events_24h": subject.events_24h,
        "subject.violations_30d": subject.violations_30d,
        "subject.phishing_clicks_30d": subject.phishing_clicks_30d,
        "subject.phishing_reports_30d": subject.phishing_reports_30d,
        "subject.training_overdue": subject.training_overdue,
        "subject.facts": {name: float(value) for name, value in subject.facts.items()},
    }


class EventActivation:
    """Bindings for one event, converted to CEL values once and shared by every rule evaluated on it."""

    __slots__ = ("_activation", "variables")

    def __init__(self, variables: Mapping[str, object]):
        self.variables = dict(variables)
        self._activation = _environment().Activation(self.variables)

    @property
    def native(self) -> Any:
        return self._activation


def build_activation(event: EventFacts, *, working_hours: WorkingHours | None = None) -> EventActivation:
    return EventActivation(event_variables(event, working_hours=working_hours))


# ---------------------------------------------------------------------------------------- compilation

# The C++ runtime reports errors as "INVALID_ARGUMENT: ERROR: <input>:1:12: message\n | snippet [CODE]".
_STATUS_PREFIX = re.compile(r"^[A-Z_]+: ")
_STATUS_SUFFIX = re.compile(r"\s*\[[A-Z_]+\]\s*$")
_POSITION = re.compile(r"<input>:(\d+):(\d+):")


def _clean_status_message(raw: str) -> str:
    return _STATUS_SUFFIX.sub("", _STATUS_PREFIX.sub("", raw.strip(), count=1))


def _offset_of(rule: str, *, line: int, column: int) -> int:
    lines = rule.split("\n")
    preceding = sum(len(text) + 1 for text in lines[: line - 1])
    return preceding + column - 1


class CompiledRule:
    """A type-checked boolean rule, ready to evaluate against any :class:`EventActivation`."""

    __slots__ = ("_expression", "source")

    def __init__(self, *, source: str, expression: Any):
        self.source = source
        self._expression = expression

    def evaluate(self, activation: EventActivation) -> bool:
        try:
            outcome = self._expression.eval(activation.native).plain_value()
        except RuntimeError as exc:  # the runtime raises for some failures (e.g. iteration budget)
            raise RuleEvaluationError(_clean_status_message(str(exc))) from exc
        # A failed evaluation yields an ERROR value whose plain value is its message.
        if not isinstance(outcome, bool):
            raise RuleEvaluationError(_clean_status_message(str(outcome)))
        return outcome


def compile_rule(rule: str) -> CompiledRule:
    """Parse and type-check ``rule``; refuse it unless it is a boolean expression over :data:`RULE_VARIABLES`.

    Raises :class:`InvalidRuleError` carrying the compiler's message and, when it gives one, the position.
    """
    size = len(rule.encode("utf-8"))
    if size > RULE_MAX_BYTES:
        raise InvalidRuleError(f"rule is {size} bytes; the limit is {RULE_MAX_BYTES}", reason="RULE_TOO_LONG")
    try:
        expression = _environment().compile(rule)
    except RuntimeError as exc:
        raw = str(exc)
        position = _POSITION.search(raw)
        if position is None:
            raise InvalidRuleError(_clean_status_message(raw)) from exc
        line, column = int(position.group(1)), int(position.group(2))
        raise InvalidRuleError(
            _clean_status_message(raw),
            line=line,
            column=column,
            offset=_offset_of(rule, line=line, column=column),
        ) from exc
    result_type = expression.return_type()
    if result_type != cel.Type.BOOL:
        raise InvalidRuleError(
            f"rule must be a boolean expression, but it evaluates to {result_type.name()}",
            reason="RULE_NOT_BOOLEAN",
        )
    return CompiledRule(source=rule, expression=expression)


# ----------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Entry:
    policy: ActivePolicy
    rule: CompiledRule | None
    compile_error: str | None


@dataclass(frozen=True)
class _Chunk:
    entries: tuple[_Entry, ...]
    combined: Any  # a CEL expression returning list<bool>, or None when the rules could not be combined


class _BoundedCache(Generic[K, V]):
    """A small thread-safe LRU map (gRPC handlers evaluate from several threads)."""

    def __init__(self, max_size: int):
        if max_size < 1:
            raise ValueError("max_size must be positive")
        self._max_size = max_size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._max_size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class CompiledPolicySet:
    """The active policies compiled for evaluation; build it with :meth:`PolicyEvaluator.policy_set`."""

    def __init__(self, chunks: Sequence[_Chunk]):
        self._chunks = tuple(chunks)

    def __len__(self) -> int:
        return sum(len(chunk.entries) for chunk in self._chunks)

    @property
    def combined_chunk_count(self) -> int:
        """How many chunks evaluate as one combined expression (the rest go rule by rule)."""
        return sum(1 for chunk in self._chunks if chunk.combined is not None)

    def evaluate(self, activation: EventActivation, *, event_id: str = "") -> EvaluationResult:
        violations: list[Violation] = []
        errors: list[PolicyEvaluationFailure] = []
        for chunk in self._chunks:
            if chunk.combined is not None and self._evaluate_combined(chunk, activation, violations):
                continue
            for entry in chunk.entries:
                self._evaluate_single(entry, activation, violations, errors)
        return EvaluationResult(event_id=event_id, violations=tuple(violations), errors=tuple(errors))

    @staticmethod
    def _evaluate_combined(chunk: _Chunk, activation: EventActivation, violations: list[Violation]) -> bool:
        try:
            outcomes = chunk.combined.eval(activation.native).plain_value()
        except RuntimeError:
            return False
        if not isinstance(outcomes, list) or len(outcomes) != len(chunk.entries):
            return False  # one rule errored; the caller re-runs them one by one to attribute it
        for entry, fired in zip(chunk.entries, outcomes, strict=True):
            if fired is True:
                violations.append(_violation(entry.policy))
        return True

    @staticmethod
    def _evaluate_single(
        entry: _Entry,
        activation: EventActivation,
        violations: list[Violation],
        errors: list[PolicyEvaluationFailure],
    ) -> None:
        policy = entry.policy
        if entry.rule is None:
            message = entry.compile_error or "rule did not compile"
            errors.append(
                PolicyEvaluationFailure(policy=policy.name, version=policy.version, message=message)
            )
            return
        try:
            fired = entry.rule.evaluate(activation)
        except RuleEvaluationError as exc:
            errors.append(
                PolicyEvaluationFailure(policy=policy.name, version=policy.version, message=exc.message)
            )
            return
        if fired:
            violations.append(_violation(policy))


def _violation(policy: ActivePolicy) -> Violation:
    return Violation(policy=policy.name, version=policy.version, severity=policy.severity, title=policy.title)


def _chunks_of(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class PolicyEvaluator:
    """Compiles and caches active policies and evaluates events against them.

    Compiled rules are cached by (policy name, version); an ACTIVE version never changes, but the cached rule
    text is still compared so a reused key can never evaluate stale code.
    """

    def __init__(
        self,
        *,
        working_hours: WorkingHours | None = None,
        program_cache_size: int = 4096,
        policy_set_cache_size: int = 8,
        chunk_size: int = 64,
    ):
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.working_hours = working_hours or WorkingHours()
        self._chunk_size = chunk_size
        self._programs: _BoundedCache[tuple[str, int], _Entry] = _BoundedCache(program_cache_size)
        self._policy_sets: _BoundedCache[tuple[tuple[str, int, str], ...], CompiledPolicySet] = _BoundedCache(
            policy_set_cache_size
        )

    @property
    def cached_program_count(self) -> int:
        return len(self._programs)

    def compiled(self, policy: ActivePolicy) -> CompiledRule:
        """The policy's compiled rule (cached); raises :class:`InvalidRuleError` if it does not compile."""
        return compile_rule(policy.rule) if (rule := self._entry(policy).rule) is None else rule

    def _entry(self, policy: ActivePolicy) -> _Entry:
        key = (policy.name, policy.version)
        cached = self._programs.get(key)
        if cached is not None and cached.policy.rule == policy.rule:
            return cached
        try:
            entry = _Entry(policy=policy, rule=compile_rule(policy.rule), compile_error=None)
        except InvalidRuleError as exc:
            entry = _Entry(policy=policy, rule=None, compile_error=f"rule does not compile: {exc.message}")
        self._programs.put(key, entry)
        return entry

    def policy_set(self, policies: Sequence[ActivePolicy]) -> CompiledPolicySet:
        """Compile (or fetch from cache) the evaluation plan for exactly these policies."""
        key = tuple((policy.name, policy.version, policy.rule) for policy in policies)
        cached = self._policy_sets.get(key)
        if cached is not None:
            return cached
        entries = [self._entry(policy) for policy in policies]
        usable = [entry for entry in entries if entry.rule is not None]
        broken = [entry for entry in entries if entry.rule is None]
        chunks = [
            _Chunk(entries=tuple(group), combined=_combine(group))
            for group in _chunks_of(usable, self._chunk_size)
        ]
        if broken:
            chunks.append(_Chunk(entries=tuple(broken), combined=None))
        policy_set = CompiledPolicySet(chunks)
        self._policy_sets.put(key, policy_set)
        return policy_set

    def activation(self, event: EventFacts) -> EventActivation:
        return build_activation(event, working_hours=self.working_hours)

    def evaluate_event(self, event: EventFacts, policies: Sequence[ActivePolicy]) -> EvaluationResult:
        return self.evaluate_events([event], policies)[0]

    def evaluate_events(
        self, events: Sequence[EventFacts], policies: Sequence[ActivePolicy]
    ) -> list[EvaluationResult]:
        policy_set = self.policy_set(policies)
        return [policy_set.evaluate(self.activation(event), event_id=event.event_id) for event in events]


def _combine(entries: Sequence[_Entry]) -> Any:
    """One CEL list expression evaluating every rule of the chunk, or None if the runtime refuses it.

    Each rule goes on its own lines so a trailing ``// comment`` in a rule cannot swallow the separator.
    """
    if len(entries) < 2:
        return None
    source = "[\n" + ",\n".join(f"(\n{entry.policy.rule}\n)" for entry in entries) + "\n]"
    try:
        return _environment().compile(source)
    except RuntimeError:
        return None  # e.g. the extra nesting pushed a deep rule over the parser limit: evaluate one by one


@functools.cache
def default_evaluator() -> PolicyEvaluator:
    """The process-wide evaluator (default working hours), created on first use."""
    return PolicyEvaluator()


def evaluate_events(events: Sequence[EventFacts], policies: Sequence[ActivePolicy]) -> list[EvaluationResult]:
    """Evaluate every event against every active policy; per-policy errors are recorded, never raised."""
    return default_evaluator().evaluate_events(events, policies)
