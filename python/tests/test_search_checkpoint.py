"""msp.Search.save / msp.Search.load: a search saved between any two calls continues exactly as the
uninterrupted one (here and in a new process), files are replaced atomically, and damaged or
foreign files are refused with a clear error.

The reference is always the same search run without interruption in this test.
"""

import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import msp
from msp.errors import InvalidArgumentError, InvalidStateError

SIZES = [4096, 8192, 4096, 12288, 4096, 8192, 16384, 4096, 8192]
SETTINGS = dict(generations=6, offspring=5, survivors=3, seed=11, surrogate_candidates=2, pair_rate=0.5)


def fitness(levels, fidelity=0):
    """Deterministic and not additive: per-layer costs, a neighbour term, +inf for some plans."""
    if sum((i + 3) * k for i, k in enumerate(levels)) % 29 == 0:
        return math.inf
    value = float(fidelity)
    for i, k in enumerate(levels):
        value += ((i * 7 + 3) % 11 + 1) * k * k
        if i:
            value += 0.5 * k * levels[i - 1]
    return value


def make(**overrides):
    proxy = np.array([[((i * 5) % 7 + 1) * k * k for k in range(8)] for i in range(len(SIZES))], dtype=float)
    return msp.Search(SIZES, 0.625, msp.nm_levels(8), sensitivity=np.arange(1.0, 10.0), proxy_costs=proxy,
                  **{**SETTINGS, **overrides})


def step(search, transcript):
    """One call: tell the pending batch if one was asked, else ask. False once done."""
    if transcript and transcript[-1][0] == "ask" and transcript[-1][2]:
        batch = transcript[-1][2]
        search.tell([fitness(p, transcript[-1][1]) for p in batch])
        transcript.append(("tell",))
        return True
    if search.done:
        return False
    batch = [c.levels for c in search.ask()]
    transcript.append(("ask", search.fidelity, batch))
    return bool(batch)


def finish(search, transcript):
    while step(search, transcript):
        pass
    best = search.best
    return best.levels, best.fitness, best.history, best.evaluations


@pytest.mark.parametrize("fidelity_levels", [1, 2])
def test_saved_after_any_call_continues_identically(tmp_path, fidelity_levels):
    reference = []
    with make(fidelity_levels=fidelity_levels) as whole:
        outcome = finish(whole, reference)
    assert len(reference) > 12
    path = tmp_path / "search.msps"
    for cut in range(len(reference) + 1):
        transcript = []
        with make(fidelity_levels=fidelity_levels) as original:
            for _ in range(cut):
                step(original, transcript)
            original.save(path)
            with msp.Search.load(path) as resumed:
                assert resumed.history == original.history and resumed.progress == original.progress
                rest = list(transcript)
                assert finish(resumed, rest) == outcome, f"cut {cut}"
                assert rest == reference, f"cut {cut}"
            assert finish(original, transcript) == outcome


def test_resume_in_a_new_process_gives_the_same_plan(tmp_path):
    path = tmp_path / "half.msps"
    with make() as search:
        transcript = []
        for _ in range(7):
            step(search, transcript)
        assert transcript[-1][0] == "ask"  # saved with a batch pending
        search.save(path)
    with make() as whole:
        expected = finish(whole, [])
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import msp
        from test_search_checkpoint import finish
        with msp.Search.load({str(path)!r}) as search:
            levels, value, history, evaluations = finish(search, [])
        print(json.dumps([levels, value, history, evaluations]))
    """)
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=os.environ)
    levels, value, history, evaluations = json.loads(out.stdout)
    assert [levels, value, history, evaluations] == list(expected)


def test_save_from_inside_run_resumes_the_pending_batch(tmp_path):
    path = tmp_path / "inside.msps"
    calls = []
    with make() as search:

        def saving(plan):
            calls.append(plan.levels)
            if len(calls) == 9:
                search.save(path)
            return fitness(plan.levels)

        expected = search.run(saving, progress=False)
    with msp.Search.load(path) as resumed:
        candidates = [c.levels for c in resumed.ask()]
        assert calls[8] in candidates  # the batch that was being scored
        best = resumed.run(lambda p: fitness(p.levels), progress=False)
    assert best.levels == expected.levels and best.fitness == expected.fitness
    assert best.history == expected.history and best.evaluations == expected.evaluations


def test_save_replaces_the_file_atomically(tmp_path, monkeypatch):
    path = tmp_path / "search.msps"
    with make() as search:
        search.save(path)
        before = path.read_bytes()
        search.tell([fitness(c.levels) for c in search.ask()])

        def broken(src, dst):
            raise OSError("disk full")

        monkeypatch.setattr(os, "replace", broken)
        with pytest.raises(OSError, match="disk full"):
            search.save(path)
        assert path.read_bytes() == before  # the old file, whole
        assert os.listdir(tmp_path) == ["search.msps"]  # no temporary file left behind
        monkeypatch.undo()
        search.save(path)
        assert path.read_bytes() != before
        with msp.Search.load(path) as loaded:
            assert loaded.progress == search.progress


def _reseal(data):
    """The file with its trailing SHA-256 recomputed."""
    return data[:-32] + hashlib.sha256(data[:-32]).digest()


def _with_meta(data, edit):
    """The file with its JSON edited (and the hash recomputed)."""
    length = struct.unpack_from("<Q", data, 12)[0]
    meta = json.loads(data[20 : 20 + length])
    edit(meta)
    text = json.dumps(meta).encode()
    return _reseal(data[:12] + struct.pack("<Q", len(text)) + text + data[20 + length :])


def test_damaged_or_foreign_files_are_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "good.msps"
    with make() as search:
        search.tell([fitness(c.levels) for c in search.ask()])
        search.save(path)
    good = path.read_bytes()
    bad = tmp_path / "bad.msps"

    def refused(data, match):
        bad.write_bytes(data)
        with pytest.raises(InvalidArgumentError, match=match):
            msp.Search.load(bad)

    refused(b"", "shorter than the smallest search file")
    refused(b"PK\x03\x04" + bytes(100), "magic bytes differ")
    refused(_reseal(good[:8] + struct.pack("<I", 2) + good[12:]), "format version 2")
    for length in (len(good) - 1, len(good) // 2, 60):
        refused(good[:length], "SHA-256 does not match")
    for i in range(12, len(good), max(1, len(good) // 40)):
        refused(good[:i] + bytes([good[i] ^ 0x20]) + good[i + 1 :], "SHA-256 does not match")
    refused(_with_meta(good, lambda m: m.update(generation=5)), "does not describe its native state")
    refused(_with_meta(good, lambda m: m.update(sizes="many")), "field 'sizes'")
    refused(_with_meta(good, lambda m: m.update(history=["x"])), "history")
    refused(_reseal(good[:20] + b"{not json" + good[29:]), "JSON does not parse")
    # The native state is checked by the library, behind a valid file hash too.
    length = struct.unpack_from("<Q", good, 12)[0]
    native = 20 + length
    refused(_reseal(good[: native + 40] + bytes([good[native + 40] ^ 1]) + good[native + 41 :]),
            "checksum does not match")
    refused(_reseal(good[:native] + good[native + 20 :]), "not a valid msp search checkpoint")
    with pytest.raises(FileNotFoundError):
        msp.Search.load(tmp_path / "missing.msps")


def test_closed_search_cannot_save(tmp_path):
    search = make()
    search.close()
    with pytest.raises(InvalidStateError):
        search.save(tmp_path / "x.msps")
    assert not (tmp_path / "x.msps").exists()


def test_the_note_travels_with_the_file_and_must_be_json(tmp_path):
    path = tmp_path / "noted.msp"
    with make() as search:
        assert search.note is None
        search.note = {"problem": [1, 2.5, "x"], "ok": True}
        search.save(path)
        before = path.read_bytes()
        search.note = {"problem": object()}
        with pytest.raises(TypeError):
            search.save(path)
        search.note = {"bad": float("nan")}
        with pytest.raises(ValueError):
            search.save(path)
    assert path.read_bytes() == before  # a failed save leaves the file as it was
    with msp.Search.load(path) as loaded:
        assert loaded.note == {"problem": [1, 2.5, "x"], "ok": True}
    with make() as plain:
        plain.save(path)
    with msp.Search.load(path) as loaded:
        assert loaded.note is None
