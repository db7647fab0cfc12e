"""A small, self-contained linearizability checker for recorded filesystem histories.

Multi-process tests drive two mounts concurrently, kill the Raft leader in the middle, and
record every operation they issue as an :class:`Op`: who issued it, on which key (file),
what it was, when it was invoked and when it returned (``time.monotonic()``, which is one
system-wide clock on Linux, so histories recorded in different processes can be merged),
and what it returned. :func:`check_history` then decides whether some total order of the
operations exists that

* respects real time -- an op that returned before another was invoked comes first, and
* is legal for a sequential specification (a :class:`Model`), with every op's observed
  result matching what the model says it should have been at that point.

Algorithm
---------
The search is the Wing & Gong tree search with Lowe's memoization, the same one used by
Porcupine and Knossos. Every op contributes two entries, an invocation and a response,
kept sorted by time in a doubly linked list. The search walks the list from the front:

* at an invocation, it tries to linearize that op *now*: if the model accepts the op in the
  current state and the pair (set of linearized ops, new state) has not been seen before,
  the op's two entries are unlinked from the list, the choice is pushed on a stack, and the
  walk restarts from the front;
* at a response, the op it belongs to has returned without having been linearized, and
  every op invoked before it has been tried, so the last choice is undone (entries
  re-linked, state restored) and the walk continues after the op that was undone.

The history is linearizable when the list becomes empty, and not linearizable when a
response is reached with nothing left to undo. The cache of (linearized set, state) pairs
is what keeps this tractable: two different interleavings that linearize the same ops and
end in the same state have the same future, so the second one is cut off at once. The
linearized set is a Python ``int`` used as a bit set.

The check is run independently per key (P-compositionality: a history of independent
objects is linearizable iff each object's sub-history is), which turns one search over
thousands of ops into many small ones.

Unknown outcomes
----------------
An op whose process was killed, or that timed out, may or may not have taken effect, and
its result was never seen. Such an op is recorded with ``ret=None``. The checker gives it a
response time of +infinity, so it may be linearized at any point after its invocation, and
the model is called with the :data:`UNKNOWN` sentinel as its result, meaning "accept any
result". "Never took effect" needs no special case: since its response is at +infinity it
can always be linearized after every other op, where its effect is observed by nobody.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "UNKNOWN",
    "CheckResult",
    "History",
    "KeyResult",
    "Model",
    "Op",
    "RegisterModel",
    "check_history",
    "check_key",
]

DEFAULT_MAX_STEPS = 2_000_000
"""Default search budget, in steps of the search loop, for each key."""


class _Unknown:
    """Type of :data:`UNKNOWN`, the result passed to a model for an op with unknown outcome.

    Only one instance exists (pickling returns that same instance), so compare with ``is``.
    """

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __reduce__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()
"""Result handed to :meth:`Model.step` for an op whose outcome is unknown (``ret is None``)."""


# --------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a history.

    Attributes:
        client: who issued it (e.g. ``"mount-a/worker-3"``); only used in reports.
        key: the object it acted on (e.g. a file path); ops on different keys are
            checked independently.
        kind: the operation, interpreted by the model (``"write"``, ``"read"``...).
        arg: its argument (hashable), or ``None``.
        call: ``time.monotonic()`` taken before the operation was issued.
        ret: ``time.monotonic()`` taken after it returned, or ``None`` if it never
            returned or its outcome is unknown (killed, timed out, ambiguous failure).
        result: what it returned (hashable); ignored when ``ret`` is ``None``.
    """

    client: str
    key: str
    kind: str
    arg: Hashable = None
    call: float = 0.0
    ret: float | None = None
    result: Hashable = None

    @property
    def unknown(self) -> bool:
        """True when the outcome of the op is unknown (it may or may not have taken effect)."""
        return self.ret is None

    def describe(self, t0: float = 0.0) -> str:
        """A one-line human-readable rendering, with times relative to ``t0``."""
        arg = "" if self.arg is None else repr(self.arg)
        res = "?" if self.ret is None else repr(self.result)
        end = "inf (unknown outcome)" if self.ret is None else f"{self.ret - t0:.6f}"
        return (f"[{self.client}] {self.kind}({arg}) -> {res}  "
                f"call={self.call - t0:.6f} ret={end}")


@runtime_checkable
class Model(Protocol):
    """Sequential specification of one object (one key).

    States must be hashable and compare by value: the search memoizes on them.
    """

    def init(self) -> Hashable:
        """The state of a key before any operation."""
        ...

    def step(self, state: Hashable, kind: str, arg: Hashable, result: Hashable) -> tuple[bool, Hashable]:
        """Apply one op to ``state``.

        Returns ``(ok, new_state)``: ``ok`` tells whether ``result`` is a correct outcome of
        the op in ``state``, ``new_state`` is the state after it (only used when ``ok``).
        ``result`` is :data:`UNKNOWN` for an op whose outcome was never observed; the model
        must then accept it (``ok=True``) and return the state it leaves behind if it takes
        effect at this point.
        """
        ...


class RegisterModel:
    """A file seen as a register holding one value, or ``None`` when the file is absent.

    Kinds:

    ``write`` (arg = value written)
        result ``"ok"``: the file now holds ``arg``. Any other result (an errno name such as
        ``"EIO"``) is a *definite* failure: the write did not take effect, state unchanged.
        A failure that might have been applied anyway must be recorded by the caller as an
        op with unknown outcome (``ret=None``).
    ``read``
        result = the value read, or ``None`` when the file did not exist; legal iff it
        equals the state. A read that failed with an error tells nothing and should be left
        out of the history (or recorded with unknown outcome).
    ``delete``
        result ``"ok"``: the file is now absent; with ``strict_delete`` (the default) this
        is only legal if the file existed. Result ``"ENOENT"``: legal iff the file was
        absent. Any other result is a definite failure that changed nothing.
    ``create_excl`` (``O_CREAT|O_EXCL`` create, arg = initial value)
        result ``"ok"``: legal iff absent, the file then holds ``arg``. Result
        ``"EEXIST"``: legal iff present. Any other result is a definite failure.

    With an unknown result every kind is accepted, and its effect is the one the operation
    has when it succeeds at that point (create_excl and delete are deterministic).
    """

    KINDS = ("write", "read", "delete", "create_excl")

    def __init__(self, strict_delete: bool = True) -> None:
        self.strict_delete = strict_delete

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, kind: str, arg: Hashable, result: Hashable) -> tuple[bool, Hashable]:
        unknown = result is UNKNOWN
        if kind == "write":
            if unknown or result == "ok":
                return True, arg
            return True, state
        if kind == "read":
            return (unknown or result == state), state
        if kind == "delete":
            if unknown:
                return True, None
            if result == "ok":
                return (state is not None or not self.strict_delete), None
            if result == "ENOENT":
                return state is None, state
            return True, state
        if kind == "create_excl":
            if unknown:
                return True, (arg if state is None else state)
            if result == "ok":
                return state is None, arg
            if result == "EEXIST":
                return state is not None, state
            return True, state
        raise ValueError(f"RegisterModel: unknown op kind {kind!r}")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class KeyResult:
    """Outcome of the search over the ops of one key.

    Attributes:
        key: the key.
        ok: True (linearizable), False (not), or None (search budget exhausted).
        ops: the ops of this key, in the order the search numbered them.
        steps: search-loop iterations spent.
        linearization: on success, op indices (into ``ops``) in linearization order. Ops
            with unknown outcome appear too; when placed after every known op, they may as
            well not have taken effect.
        best_prefix: on failure/undecided, op indices of the longest linearizable prefix the
            search reached.
        explanation: human-readable report.
    """

    key: str
    ok: bool | None
    ops: list[Op]
    steps: int
    linearization: list[int] = field(default_factory=list)
    best_prefix: list[int] = field(default_factory=list)
    explanation: str = ""

    def __bool__(self) -> bool:
        return self.ok is True


@dataclass
class CheckResult:
    """Outcome of :func:`check_history`.

    ``ok`` is True when every key is linearizable, False when at least one key is not
    (``key`` names the first such key, ``failing_keys`` all of them), and None when no key
    failed but the search budget ran out on some (``undecided_keys``). Truth value: only
    ``ok is True`` counts as true, so ``assert check_history(...)`` does the right thing.
    """

    ok: bool | None
    key: str | None = None
    explanation: str = ""
    failing_keys: list[str] = field(default_factory=list)
    undecided_keys: list[str] = field(default_factory=list)
    per_key: dict[str, KeyResult] = field(default_factory=dict)
    steps: int = 0

    def __bool__(self) -> bool:
        return self.ok is True

    def __str__(self) -> str:
        return self.explanation


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------


def _validate(op: Op) -> None:
    if not isinstance(op.call, (int, float)) or math.isnan(op.call):
        raise ValueError(f"op has no valid call time: {op!r}")
    if op.ret is not None and op.ret < op.call:
        raise ValueError(f"op returns before it is called: {op!r}")


def check_key(ops: Sequence[Op], model: Model, max_steps: int = DEFAULT_MAX_STEPS,
              key: str | None = None, t0: float | None = None) -> KeyResult:
    """Check the history of a single object (all ``ops`` are taken to act on one key).

    ``t0`` is the time origin used in the explanation (default: earliest call in ``ops``).
    """
    ops = list(ops)
    for op in ops:
        _validate(op)
    if key is None:
        key = ops[0].key if ops else ""
    if t0 is None:
        t0 = min((op.call for op in ops), default=0.0)
    n = len(ops)

    # Entries 1..2n sorted by time; 0 is the head sentinel and 2n+1 the tail sentinel. At
    # equal times invocations sort before responses, so ops that merely touch count as
    # concurrent (the lenient reading of a clock tie).
    events = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, i))
        events.append((math.inf if op.ret is None else op.ret, 1, i))
    events.sort()
    head, tail = 0, 2 * n + 1
    size = 2 * n + 2
    nxt = list(range(1, size + 1))
    prv = list(range(-1, size - 1))
    is_call = [False] * size
    op_of = [-1] * size
    match = [-1] * size
    call_entry = [0] * n
    for pos, (_, kind, i) in enumerate(events, start=1):
        op_of[pos] = i
        if kind == 0:
            is_call[pos] = True
            call_entry[i] = pos
        else:
            match[call_entry[i]] = pos

    step_args = [(op.kind, op.arg, UNKNOWN if op.ret is None else op.result) for op in ops]
    bit = [1 << i for i in range(n)]
    model_step = model.step

    state = model.init()
    linearized = 0
    stack: list[tuple[int, Hashable]] = []  # (call entry linearized, state before it)
    seen: set[tuple[int, Hashable]] = set()
    best: list[int] = []
    steps = 0
    entry = nxt[head]
    outcome: bool | None = True

    while nxt[head] != tail:
        if steps >= max_steps:
            outcome = None
            break
        steps += 1
        if is_call[entry]:
            i = op_of[entry]
            kind, arg, result = step_args[i]
            ok, new_state = model_step(state, kind, arg, result)
            if ok:
                new_linearized = linearized | bit[i]
                memo = (new_linearized, new_state)
                if memo not in seen:
                    seen.add(memo)
                    stack.append((entry, state))
                    state = new_state
                    linearized = new_linearized
                    # lift: unlink the invocation and its response.
                    p, q = prv[entry], nxt[entry]
                    nxt[p] = q
                    prv[q] = p
                    m = match[entry]
                    p, q = prv[m], nxt[m]
                    nxt[p] = q
                    prv[q] = p
                    if len(stack) > len(best):
                        best = [op_of[e] for e, _ in stack]
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:
            # The response of an op that is not linearized yet: backtrack.
            if not stack:
                outcome = False
                break
            entry, state = stack.pop()
            linearized &= ~bit[op_of[entry]]
            # unlift: re-link the response, then the invocation.
            m = match[entry]
            nxt[prv[m]] = m
            prv[nxt[m]] = m
            nxt[prv[entry]] = entry
            prv[nxt[entry]] = entry
            entry = nxt[entry]

    res = KeyResult(key=key, ok=outcome, ops=ops, steps=steps)
    if outcome is True:
        res.linearization = [op_of[e] for e, _ in stack]
        res.explanation = f"key {key!r}: linearizable ({n} ops, {steps} steps)"
    else:
        res.best_prefix = best
        res.explanation = _explain(key, ops, model, best, events, outcome, steps, t0)
    return res


def _explain(key: str, ops: list[Op], model: Model, prefix: list[int],
             events: list[tuple[float, int, int]], outcome: bool | None, steps: int,
             t0: float) -> str:
    """Describe a failed (or abandoned) search: the longest prefix and what blocked it."""
    verdict = ("is NOT linearizable" if outcome is False
               else f"is undecided: search budget of {steps} steps exhausted")
    lines = [f"key {key!r}: history of {len(ops)} ops {verdict}."]
    lines.append(f"Longest linearizable prefix found ({len(prefix)} of {len(ops)} ops), "
                 "with the state after each op:")
    state = model.init()
    if not prefix:
        lines.append("    (none)")
    for n, i in enumerate(prefix, start=1):
        op = ops[i]
        _, state = model.step(state, op.kind, op.arg, UNKNOWN if op.ret is None else op.result)
        lines.append(f"  {n:4d}. {op.describe(t0)}   => state {state!r}")

    done = set(prefix)
    candidates: list[int] = []
    blocker: int | None = None
    for _, kind, i in events:
        if i in done:
            continue
        if kind == 0:
            candidates.append(i)
        else:
            blocker = i
            break
    if blocker is not None:
        lines.append(f"Could not place the next op. From state {state!r}, the ops that could "
                     "come next (invoked before the first pending response) are:")
        for i in candidates:
            op = ops[i]
            ok, after = model.step(state, op.kind, op.arg,
                                   UNKNOWN if op.ret is None else op.result)
            why = (f"legal here (-> state {after!r}) but every continuation fails" if ok
                   else "not legal in this state")
            lines.append(f"        {op.describe(t0)}   : {why}")
        lines.append(f"and this op returned without having been placed: "
                     f"{ops[blocker].describe(t0)}")
    return "\n".join(lines)


def check_history(ops: Iterable[Op], model: Model | None = None,
                  max_steps: int = DEFAULT_MAX_STEPS) -> CheckResult:
    """Check a whole multi-key history, one key at a time.

    Args:
        ops: the recorded operations, in any order.
        model: sequential specification of one key (default :class:`RegisterModel`).
        max_steps: search budget *per key*; a key that exhausts it is undecided.

    Returns:
        a :class:`CheckResult`; on failure ``key`` names the first failing key (in sorted
        order) and ``explanation`` shows its longest linearizable prefix and the ops that
        could not be placed after it.
    """
    if model is None:
        model = RegisterModel()
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    t0 = min((op.call for group in by_key.values() for op in group), default=0.0)

    result = CheckResult(ok=True)
    for key in sorted(by_key, key=repr):
        kr = check_key(by_key[key], model, max_steps=max_steps, key=key, t0=t0)
        result.per_key[key] = kr
        result.steps += kr.steps
        if kr.ok is False:
            result.failing_keys.append(key)
        elif kr.ok is None:
            result.undecided_keys.append(key)

    total = sum(len(g) for g in by_key.values())
    if result.failing_keys:
        result.ok = False
        result.key = result.failing_keys[0]
        others = result.failing_keys[1:]
        extra = f"\n(other non-linearizable keys: {others!r})" if others else ""
        result.explanation = result.per_key[result.key].explanation + extra
    elif result.undecided_keys:
        result.ok = None
        result.key = result.undecided_keys[0]
        result.explanation = (f"undecided on {len(result.undecided_keys)} key(s) "
                              f"{result.undecided_keys!r}; first one:\n"
                              + result.per_key[result.key].explanation)
    else:
        result.explanation = (f"linearizable: {total} ops over {len(by_key)} keys "
                              f"({result.steps} search steps)")
    return result


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    client: str
    key: str
    kind: str
    arg: Hashable
    call: float
    ret: float | None = None
    result: Hashable = None
    state: str = "pending"  # pending | done | unknown


class History:
    """Thread-safe recorder of a history.

    Usage, around each real operation::

        token = h.invoke("mount-a", "f3", "write", value)
        try:
            do_the_write()
        except TimeoutError:
            h.unknown(token)          # may or may not have happened
        else:
            h.complete(token, "ok")

    Ops never completed nor marked unknown are reported with unknown outcome as well.
    Times come from ``time.monotonic()`` (system-wide on Linux), so ops recorded in other
    processes can be merged in with :meth:`extend`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[_Pending] = []
        self._extra: list[Op] = []

    def invoke(self, client: str, key: str, kind: str, arg: Hashable = None) -> int:
        """Record the invocation of an op; call it *before* issuing the op. Returns a token."""
        with self._lock:
            now = time.monotonic()
            self._records.append(_Pending(client, key, kind, arg, now))
            return len(self._records) - 1

    def complete(self, token: int, result: Hashable) -> None:
        """Record that the op returned ``result``; call it *after* the op returned."""
        with self._lock:
            now = time.monotonic()
            rec = self._take(token)
            rec.ret, rec.result, rec.state = now, result, "done"

    def unknown(self, token: int) -> None:
        """Record that the outcome of the op is unknown (it keeps ``ret=None``)."""
        with self._lock:
            self._take(token).state = "unknown"

    def extend(self, ops: Iterable[Op]) -> None:
        """Add ops recorded elsewhere (e.g. in another process)."""
        with self._lock:
            self._extra.extend(ops)

    def ops(self) -> list[Op]:
        """A snapshot of the history: every recorded op, pending ones with ``ret=None``."""
        with self._lock:
            out = [Op(r.client, r.key, r.kind, r.arg, r.call, r.ret,
                      r.result if r.state == "done" else None) for r in self._records]
            return out + list(self._extra)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records) + len(self._extra)

    def _take(self, token: int) -> _Pending:
        if not 0 <= token < len(self._records):
            raise KeyError(f"unknown history token {token!r}")
        rec = self._records[token]
        if rec.state != "pending":
            raise ValueError(f"op {token} was already finished ({rec.state})")
        return rec
