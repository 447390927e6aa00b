"""register._cached_rows memoises per-pair registration results as numpy columns (issue 15, scale9): the same
arrays as the per-pair dict of floats it replaces, across calls that share keys, and from two threads."""
from __future__ import annotations

import threading

import numpy as np

from imprint.engine.membership import register


def _old_cached_rows(fn, keys, cache, name):
    """The per-pair dict memo before scale9 (reference; also the "before" side of `bench_scaling.py --row-memo`)."""
    n = len(keys)
    if cache is None:
        return fn(np.arange(n))
    store = cache.setdefault(name, {})
    miss = [i for i, k in enumerate(keys) if k not in store]
    if miss:
        res = fn(np.asarray(miss, np.int64))
        for t, i in enumerate(miss):
            store[keys[i]] = {k: float(v[t]) for k, v in res.items()}
    fields = next(iter(store.values())).keys() if store else ()
    return {f: np.array([store[k][f] for k in keys], np.float64) for f in fields} if n else {}


def _fn_of(keys, calls):
    def fn(sel):
        calls.append(len(sel))
        h = np.array([hash(keys[i]) % 100003 for i in sel], np.int64)
        return {"coarse": np.sin(h).astype(np.float32), "flip": (h % 2).astype(np.int64),
                "angle": np.cos(h) * 1e3, "ok": h % 3 == 0}
    return fn


def test_row_memo_equals_the_dict_memo():
    rng = np.random.default_rng(0)
    pool = [(f"a{i}", f"b{j}", int(f)) for i, j, f in rng.integers(0, 200, (3000, 3)) % [200, 200, 2]]
    new_cache, old_cache = {}, {}
    for step in range(4):                                   # overlapping calls, duplicate keys within a call
        keys = [pool[i] for i in rng.integers(0, len(pool), 1200)]
        calls_new, calls_old = [], []
        got = register._cached_rows(_fn_of(keys, calls_new), keys, new_cache, "reg_coarse")
        ref = _old_cached_rows(_fn_of(keys, calls_old), keys, old_cache, "reg_coarse")
        assert list(got) == list(ref)
        for f in ref:
            assert got[f].dtype == np.float64
            np.testing.assert_array_equal(got[f], ref[f])
        assert calls_new == calls_old                       # the same rows computed
    assert isinstance(new_cache["reg_coarse"], register._RowMemo)
    assert len(new_cache["reg_coarse"]) == len(old_cache["reg_coarse"]) > 1024   # grown past its first capacity
    assert register._cached_rows(_fn_of([], []), [], new_cache, "reg_coarse") == {}
    # no cache: fn on every row, as it returns them
    keys = pool[:5]
    out = register._cached_rows(_fn_of(keys, []), keys, None, "x")
    assert out["flip"].dtype == np.int64 and len(out["coarse"]) == 5


def test_row_memo_from_two_threads():
    keys = [(f"a{i}", f"b{i % 97}", i % 2) for i in range(5000)]
    cache: dict = {}
    ref = _old_cached_rows(_fn_of(keys, []), keys, {}, "m")
    outs = [None, None]

    def work(j):
        for s in range(0, len(keys), 700):
            register._cached_rows(_fn_of(keys[s:s + 700], []), keys[s:s + 700], cache, "m")
        outs[j] = register._cached_rows(_fn_of(keys, []), keys, cache, "m")

    th = [threading.Thread(target=work, args=(j,)) for j in range(2)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    for o in outs:
        for f in ref:
            np.testing.assert_array_equal(o[f], ref[f])
    assert len(cache["m"]) == len(set(keys))
