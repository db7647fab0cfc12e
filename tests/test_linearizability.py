"""Unit tests of the linearizability checker in ``tests/linearizability.py``.

Most of these tests show that the checker *rejects* bad histories (stale reads, lost
acknowledged writes, double exclusive creates, invented values): a checker that accepts
everything would pass the live multi-process tests for the wrong reason. Histories are
written with explicit, made-up times; no test sleeps.
"""

from __future__ import annotations

import random
import threading

import pytest

from linearizability import UNKNOWN, CheckResult, History, Op, RegisterModel, check_history, check_key


def op(client: str, kind: str, arg=None, call: float = 0.0, ret: float | None = None,
       result=None, key: str = "k") -> Op:
    return Op(client=client, key=key, kind=kind, arg=arg, call=call, ret=ret, result=result)


def W(value, call, ret, result="ok", client="c1", key="k") -> Op:
    return op(client, "write", value, call, ret, result, key)


def R(result, call, ret, client="c2", key="k") -> Op:
    return op(client, "read", None, call, ret, result, key)


def D(call, ret, result="ok", client="c1", key="k") -> Op:
    return op(client, "delete", None, call, ret, result, key)


def X(value, call, ret, result="ok", client="c1", key="k") -> Op:
    return op(client, "create_excl", value, call, ret, result, key)


def passes(ops) -> CheckResult:
    res = check_history(ops, RegisterModel())
    assert res.ok is True, res.explanation
    assert res
    return res


def fails(ops, key: str = "k") -> CheckResult:
    res = check_history(ops, RegisterModel())
    assert res.ok is False, res.explanation
    assert not res
    assert res.key == key
    assert f"key {key!r}" in res.explanation
    return res


# -- (a) sequential histories ----------------------------------------------------------------


def test_sequential_valid_history_passes():
    res = passes([
        R(None, 0, 1),
        X("a", 2, 3),
        R("a", 4, 5),
        X("z", 6, 7, result="EEXIST"),
        W("b", 8, 9),
        W("c", 10, 11, result="EIO"),        # definite failure: no effect
        R("b", 12, 13),
        D(14, 15),
        D(16, 17, result="ENOENT"),
        R(None, 18, 19),
        X("d", 20, 21),
        R("d", 22, 23),
    ])
    kr = res.per_key["k"]
    assert kr.linearization == list(range(12))


def test_empty_history_passes():
    assert check_history([], RegisterModel()).ok is True


# -- (b) invented values ---------------------------------------------------------------------


def test_read_of_value_never_written_fails():
    res = fails([W("a", 0, 1), R("zzz", 2, 3)])
    assert "'zzz'" in res.explanation


def test_read_of_value_on_absent_file_fails():
    fails([R("a", 0, 1)])


# -- (c) stale reads -------------------------------------------------------------------------


def test_stale_read_after_completed_overwrite_fails():
    res = fails([W("a", 0, 1), W("b", 2, 3), R("a", 4, 5)])
    kr = res.per_key["k"]
    # The search gets the two writes in, then cannot place the stale read.
    assert len(kr.best_prefix) == 2
    assert "returned without having been placed" in res.explanation
    assert "read() -> 'a'" in res.explanation


def test_read_of_deleted_file_fails():
    fails([W("a", 0, 1), D(2, 3), R("a", 4, 5)])


def test_read_going_back_in_time_fails():
    # The write of b overlaps both reads, but once a read saw b, a later read cannot see a.
    fails([W("a", 0, 1), W("b", 2, 10), R("b", 3, 4), R("a", 5, 6, client="c3")])


# -- (d) concurrency where either order is fine -----------------------------------------------


@pytest.mark.parametrize("first,second", [("a", "a"), ("a", "b"), ("b", "b")])
def test_reads_overlapping_a_write_pass(first, second):
    passes([W("a", 0, 1), W("b", 2, 10), R(first, 3, 4), R(second, 5, 6, client="c3")])


@pytest.mark.parametrize("seen", ["a", "b"])
def test_concurrent_writes_either_order_passes(seen):
    passes([W("a", 0, 5), W("b", 1, 4, client="c2"), R(seen, 6, 7, client="c3")])


def test_ops_touching_at_one_instant_count_as_concurrent():
    passes([W("a", 0, 1), R(None, 1, 2)])


def test_concurrent_reads_disagreeing_with_every_order_fail():
    # Both writes finished before the reads; the reads see different final values.
    fails([W("a", 0, 5), W("b", 1, 4, client="c2"),
           R("a", 6, 7, client="c3"), R("b", 8, 9, client="c4")])


# -- (e) unknown outcomes --------------------------------------------------------------------


def test_unknown_write_later_read_passes():
    passes([W("a", 0, 1), W("b", 2, None), R("b", 5, 6)])


def test_unknown_write_never_read_passes():
    passes([W("a", 0, 1), W("b", 2, None), R("a", 5, 6), R("a", 7, 8)])


def test_unknown_write_may_take_effect_late():
    # Seen as not-yet-applied, then applied: fine, it can take effect any time after its call.
    passes([W("a", 0, 1), W("b", 2, None), R("a", 5, 6), W("c", 7, 8, client="c3"),
            R("c", 9, 10), R("b", 11, 12)])


def test_unknown_write_cannot_be_undone():
    fails([W("a", 0, 1), W("b", 2, None), R("b", 5, 6), R("a", 7, 8)])


def test_unknown_write_cannot_act_before_its_call():
    fails([W("a", 0, 1), R("b", 2, 3), W("b", 4, None)])


def test_unknown_result_is_ignored():
    # The recorded result of an op with unknown outcome is meaningless and not checked.
    passes([W("a", 0, 1), R("garbage", 2, None), X("q", 3, None, result="EEXIST"),
            R("a", 4, 5)])


def test_unknown_create_excl_and_delete():
    passes([X("a", 0, None), R("a", 1, 2)])
    passes([X("a", 0, None), R(None, 1, 2)])
    passes([W("a", 0, 1), D(2, None), R("a", 3, 4), R(None, 5, 6)])
    fails([W("a", 0, 1), X("b", 2, None), R("b", 3, 4)])  # b cannot be created over a


# -- (f) lost acknowledged writes ------------------------------------------------------------


def test_lost_acknowledged_write_fails():
    # Mount A's write of "new" is acknowledged; a later read on mount B sees "old".
    fails([W("old", 0, 1, client="mount-a"), W("new", 2, 3, client="mount-a"),
           R("old", 4, 5, client="mount-b")])


def test_lost_acknowledged_delete_fails():
    fails([W("a", 0, 1, client="mount-a"), D(2, 3, client="mount-a"),
           R("a", 4, 5, client="mount-b")])


def test_failed_write_must_not_take_effect():
    fails([W("a", 0, 1), W("b", 2, 3, result="EIO"), R("b", 4, 5)])


def test_delete_ok_of_absent_file_fails_unless_lenient():
    fails([D(0, 1)])
    assert check_history([D(0, 1)], RegisterModel(strict_delete=False)).ok is True


# -- (g) exclusive create --------------------------------------------------------------------


def test_two_concurrent_exclusive_creates_both_ok_fail():
    res = fails([X("a", 0, 5, client="mount-a"), X("b", 1, 4, client="mount-b")])
    assert "create_excl" in res.explanation


def test_concurrent_exclusive_creates_one_winner_pass():
    passes([X("a", 0, 5, client="mount-a"), X("b", 1, 4, client="mount-b", result="EEXIST"),
            R("a", 6, 7)])


def test_exclusive_create_winner_must_match_later_read():
    fails([X("a", 0, 5, client="mount-a"), X("b", 1, 4, client="mount-b", result="EEXIST"),
           R("b", 6, 7)])


def test_exclusive_create_eexist_on_absent_file_fails():
    fails([X("a", 0, 1, result="EEXIST")])


# -- (h) per-key independence ----------------------------------------------------------------


def test_violation_is_reported_with_its_key():
    ops = [
        W("a", 0, 1, key="k1"), R("a", 2, 3, key="k1"),
        W("a", 0, 1, key="k2"), W("b", 2, 3, key="k2"), R("a", 4, 5, key="k2"),
        W("x", 0, 10, key="k3"), R("x", 11, 12, key="k3"),
        # Same values on k1 as on k2, and concurrent with the k2 ops: keys must not mix.
        W("b", 1.5, 3.5, key="k1"), R("b", 4, 5, key="k1"),
    ]
    res = fails(ops, key="k2")
    assert res.failing_keys == ["k2"]
    assert res.per_key["k1"].ok is True
    assert res.per_key["k3"].ok is True


def test_several_failing_keys_are_all_listed():
    ops = [R("a", 0, 1, key="p"), W("a", 0, 1, key="q"), R("a", 2, 3, key="q"),
           R("b", 0, 1, key="r")]
    res = fails(ops, key="p")
    assert res.failing_keys == ["p", "r"]
    assert "'r'" in res.explanation


# -- budget, validation, recorder ------------------------------------------------------------


def _hard_history(n: int = 14) -> list[Op]:
    """Many fully concurrent writes followed by a read of a value none of them wrote."""
    ops = [W(f"v{i}", 0, 100, client=f"c{i}") for i in range(n)]
    return ops + [R("nope", 101, 102)]


def test_budget_exhausted_is_undecided():
    res = check_history(_hard_history(), RegisterModel(), max_steps=1000)
    assert res.ok is None
    assert not res
    assert res.undecided_keys == ["k"]
    assert "undecided" in res.explanation
    assert res.per_key["k"].steps == 1000


def test_budget_large_enough_decides():
    # Memoization keeps this small: states differ only by the last value written.
    res = check_history(_hard_history(), RegisterModel())
    assert res.ok is False


def test_failure_anywhere_beats_undecided():
    ops = [*_hard_history(), R("x", 0, 1, key="bad")]
    res = check_history(ops, RegisterModel(), max_steps=1000)
    assert res.ok is False and res.key == "bad"
    assert res.undecided_keys == ["k"]


def test_op_returning_before_call_is_rejected():
    with pytest.raises(ValueError):
        check_history([W("a", 5, 4)], RegisterModel())


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError):
        check_history([op("c", "rename", None, 0, 1, "ok")], RegisterModel())


def test_check_key_reports_linearization():
    kr = check_key([R("b", 2, 6), W("b", 1, 5), W("a", 0, 0.5)], RegisterModel())
    assert kr.ok is True
    assert kr.linearization == [2, 1, 0]


def test_register_model_unknown_sentinel():
    m = RegisterModel()
    assert m.step("a", "read", None, UNKNOWN) == (True, "a")
    assert m.step("a", "write", "b", UNKNOWN) == (True, "b")
    assert m.step(None, "create_excl", "c", UNKNOWN) == (True, "c")
    assert m.step("a", "create_excl", "c", UNKNOWN) == (True, "a")
    assert m.step("a", "delete", None, UNKNOWN) == (True, None)


def test_history_recorder_threads():
    h = History()
    n_threads, per_thread = 8, 50

    def worker(t: int) -> None:
        for i in range(per_thread):
            tok = h.invoke(f"c{t}", f"k{i % 3}", "write", (t, i))
            if i % 10 == 9:
                h.unknown(tok)
            else:
                h.complete(tok, "ok")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops = h.ops()
    assert len(ops) == len(h) == n_threads * per_thread
    assert sum(o.ret is None for o in ops) == n_threads * per_thread // 10
    for o in ops:
        assert o.ret is None or o.ret >= o.call
    # Only writes: always linearizable.
    assert check_history(ops, RegisterModel()).ok is True


def test_history_recorder_bookkeeping():
    h = History()
    a = h.invoke("c1", "k", "write", "a")
    b = h.invoke("c2", "k", "read")
    h.complete(a, "ok")
    with pytest.raises(ValueError):
        h.complete(a, "ok")
    with pytest.raises(KeyError):
        h.complete(99, "ok")
    ops = h.ops()
    assert ops[0].result == "ok" and ops[0].ret is not None
    assert ops[1].ret is None and ops[1].unknown            # still pending = unknown
    h.complete(b, "a")
    h.extend([W("z", 0, 1, key="other")])
    ops = h.ops()
    assert [o.key for o in ops] == ["k", "k", "other"]
    assert check_history(ops, RegisterModel()).ok is True


# -- (i) randomized: simulate a real linearizable register ------------------------------------


NEVER_WRITTEN = "never-written"


def simulate(seed: int, n_ops: int = 80, n_keys: int = 3, n_clients: int = 6,
             p_unknown: float = 0.05, prefix: str = "k") -> list[Op]:
    """A history produced by a genuinely linearizable register.

    Clients issue ops one after another with random gaps and durations, so ops overlap
    across clients. Each op takes effect at a random instant inside its interval (ops with
    unknown outcome: at a random instant after their call, possibly long after, or never),
    and results are computed by applying the ops to a dict in the order of those instants.
    Keys are named ``{prefix}0``, ``{prefix}1``...; every value written is unique and names
    its key.
    """
    rng = random.Random(seed)
    clock = {f"c{c}": rng.uniform(0, 1) for c in range(n_clients)}
    planned = []  # (effect time or None, call, ret, client, key, kind, arg)
    for n in range(n_ops):
        client = rng.choice(list(clock))
        call = clock[client] + rng.uniform(0, 0.5)
        ret = call + rng.uniform(0.01, 2.0)
        key = f"{prefix}{rng.randrange(n_keys)}"
        kind = rng.choices(["write", "read", "delete", "create_excl"], [4, 5, 1, 2])[0]
        arg = f"{key}/{client}-{n}" if kind in ("write", "create_excl") else None
        if rng.random() < p_unknown:
            effect = None if rng.random() < 0.3 else call + rng.uniform(0, 6.0)
            planned.append((effect, call, None, client, key, kind, arg))
            clock[client] = call + rng.uniform(0, 2.0)   # the client gave up and moved on
        else:
            effect = rng.uniform(call, ret)
            if kind == "write" and rng.random() < 0.05:
                effect = None                              # definite failure, no effect
            planned.append((effect, call, ret, client, key, kind, arg))
            clock[client] = ret

    register: dict[str, object] = {}
    ops = []
    order = sorted(range(len(planned)),
                   key=lambda i: (planned[i][0] is None, planned[i][0] or 0.0))
    for i in order:
        effect, call, ret, client, key, kind, arg = planned[i]
        state = register.get(key)
        if effect is None:
            result = "EIO" if kind == "write" and ret is not None else None
        elif kind == "write":
            register[key], result = arg, "ok"
        elif kind == "read":
            result = state
        elif kind == "delete":
            result = "ENOENT" if state is None else "ok"
            register.pop(key, None)
        else:
            if state is None:
                register[key], result = arg, "ok"
            else:
                result = "EEXIST"
        ops.append(Op(client, key, kind, arg, call, ret, result if ret is not None else None))
    rng.shuffle(ops)
    return ops


@pytest.mark.parametrize("chunk", range(4))
def test_random_linearizable_histories_pass_and_mutations_fail(chunk):
    for seed in range(chunk * 50, chunk * 50 + 50):
        ops = simulate(seed)
        res = check_history(ops, RegisterModel())
        assert res.ok is True, f"seed {seed}:\n{res.explanation}"

        reads = [i for i, o in enumerate(ops) if o.kind == "read" and o.ret is not None]
        assert reads, f"seed {seed}: no read to mutate"
        i = random.Random(seed).choice(reads)
        bad = list(ops)
        bad[i] = Op(ops[i].client, ops[i].key, "read", None, ops[i].call, ops[i].ret,
                    NEVER_WRITTEN)
        res = check_history(bad, RegisterModel())
        assert res.ok is False, f"seed {seed}: mutation of op {i} not detected"
        assert res.key == ops[i].key
        assert repr(NEVER_WRITTEN) in res.explanation


def test_large_history_is_checked_quickly():
    """~2,000 ops over 50 keys, ~10 concurrent clients per key, a few unknown outcomes."""
    ops = []
    for k in range(50):
        ops += simulate(10_000 + k, n_ops=40, n_keys=1, n_clients=10, p_unknown=0.03,
                        prefix=f"key{k}-")
    assert len(ops) == 2000
    assert sum(o.ret is None for o in ops) > 5
    res = check_history(ops, RegisterModel())
    assert res.ok is True, res.explanation
    assert len(res.per_key) == 50

    # Lose one acknowledged write whose value was read back after it returned: the write
    # now reports a definite failure, so nothing can explain that read any more.
    by_value = {o.arg: o for o in ops if o.kind == "write" and o.result == "ok"}
    read_back = [o for o in ops if o.kind == "read" and o.ret is not None and o.result in by_value
                 and o.call > by_value[o.result].ret]
    victim = by_value[read_back[0].result]
    bad = [Op(o.client, o.key, o.kind, o.arg, o.call, o.ret, "EIO") if o is victim else o
           for o in ops]
    res = check_history(bad, RegisterModel())
    assert res.ok is False
    assert res.key == victim.key


# -- cross-check against brute force on small random histories --------------------------------


def brute_force(ops: list[Op], model: RegisterModel) -> bool:
    """Linearizable iff some subset of the unknown-outcome ops (those that took effect) and
    some order of the chosen ops respecting real time is legal for the model."""
    from itertools import combinations, permutations

    known = [o for o in ops if o.ret is not None]
    unknown = [o for o in ops if o.ret is None]

    def before(a: Op, b: Op) -> bool:      # a must precede b (touching ops are concurrent)
        return a.ret is not None and a.ret < b.call

    for r in range(len(unknown) + 1):
        for chosen in combinations(unknown, r):
            group = known + list(chosen)
            for perm in permutations(group):
                if any(before(perm[j], perm[i]) for i in range(len(perm))
                       for j in range(i + 1, len(perm))):
                    continue
                state, ok = model.init(), True
                for o in perm:
                    ok, state = model.step(state, o.kind, o.arg,
                                           UNKNOWN if o.ret is None else o.result)
                    if not ok:
                        break
                if ok:
                    return True
    return False


def random_small_history(rng: random.Random, n: int) -> list[Op]:
    ops = []
    for i in range(n):
        call = rng.randrange(0, 8)
        ret = None if rng.random() < 0.15 else call + rng.randrange(0, 4)
        kind = rng.choices(["write", "read", "delete", "create_excl"], [3, 4, 1, 2])[0]
        arg = rng.choice("ab") if kind in ("write", "create_excl") else None
        result = {"write": lambda: rng.choice(["ok", "ok", "ok", "EIO"]),
                  "read": lambda: rng.choice([None, "a", "b"]),
                  "delete": lambda: rng.choice(["ok", "ENOENT"]),
                  "create_excl": lambda: rng.choice(["ok", "EEXIST"])}[kind]()
        ops.append(Op(f"c{i}", "k", kind, arg, float(call),
                      None if ret is None else float(ret), None if ret is None else result))
    return ops


def test_agrees_with_brute_force_on_small_histories():
    rng = random.Random(1234)
    model = RegisterModel()
    verdicts = []
    for _ in range(1000):
        ops = random_small_history(rng, rng.randrange(1, 8))
        expected = brute_force(ops, model)
        got = check_history(ops, model).ok
        assert got is expected, "\n".join(o.describe() for o in ops)
        verdicts.append(expected)
    assert 100 < sum(verdicts) < 900         # both verdicts are well represented
