"""Block-configuration choice of the Triton depthwise kernels (timing logic, cache, file)."""

import time

import pytest
import torch

from dcls_audio.dcls import tuning


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(tuning, "TUNED", {})
    monkeypatch.setattr(tuning, "TIMINGS", {})
    monkeypatch.setenv("DCLS_TRITON_TUNE", "force")  # time on the CPU too
    return tuning


def _slow_for(bad: dict):
    calls = []

    def run(cfg):
        calls.append(cfg)
        if cfg == bad["fails"]:
            raise RuntimeError("does not compile")
        time.sleep(0.004 if cfg is not bad["fast"] else 0.0)

    return run, calls


def test_fastest_valid_candidate_is_kept_and_reused(fresh):
    candidates = fresh.FWD_CANDIDATES[:4]
    bad = {"fails": candidates[1], "fast": candidates[2]}
    run, calls = _slow_for(bad)
    cpu = torch.device("cpu")
    with pytest.warns(UserWarning, match="left out"):
        chosen = fresh._choose(
            "k", fresh.FWD_DEFAULT, candidates, run, cpu, lambda c: c is not candidates[3]
        )
    assert {k: v for k, v in chosen.items() if k not in ("ms", "timed")} == candidates[2]
    assert chosen["timed"] == 2  # one failed, one not valid for the shape
    assert candidates[3] not in calls
    n = len(calls)
    assert fresh._choose("k", fresh.FWD_DEFAULT, candidates, run, cpu, bool) is chosen
    assert len(calls) == n  # cached: no second timing


def test_no_valid_candidate_times_the_default(fresh):
    run, _ = _slow_for({"fails": None, "fast": None})
    chosen = fresh._choose("k", fresh.WGRAD_DEFAULT, fresh.WGRAD_CANDIDATES, run,
                           torch.device("cpu"), lambda c: False)  # fmt: skip
    assert chosen["BR"] == fresh.WGRAD_DEFAULT["BR"] and chosen["timed"] == 1


def test_nothing_is_timed_when_switched_off(fresh, monkeypatch):
    def run(cfg):
        raise AssertionError("timed")

    for env, value in (("DCLS_TRITON_TUNE", "1"), ("DCLS_TRITON_TUNE", "0")):
        monkeypatch.setenv(env, value)  # "1": CUDA only
        assert fresh._choose("k", fresh.FWD_DEFAULT, fresh.FWD_CANDIDATES, run,
                             torch.device("cpu"), bool) is fresh.FWD_DEFAULT  # fmt: skip
    monkeypatch.setenv("DCLS_TRITON_TUNE", "force")
    torch.use_deterministic_algorithms(True)
    try:
        assert not fresh.tuning_enabled(torch.device("cuda"))  # every process computes alike
    finally:
        torch.use_deterministic_algorithms(False)


def test_choices_survive_a_file_round_trip(fresh, tmp_path):
    fresh.TUNED["fwd|1x2x3|bfloat16|NVIDIA H200"] = dict(fresh.FWD_DEFAULT, ms=0.1, timed=3)
    path = tmp_path / "configs.json"
    fresh.save(path)
    fresh.TUNED.clear()
    assert fresh.load(path) == 1
    assert fresh.TUNED["fwd|1x2x3|bfloat16|NVIDIA H200"]["BM"] == fresh.FWD_DEFAULT["BM"]


def test_candidates_are_distinct_and_well_formed():
    for candidates, keys in (
        (tuning.FWD_CANDIDATES, {"BM", "BW", "TOEP", "num_warps", "num_stages"}),
        (tuning.WGRAD_CANDIDATES, {"BR", "BW", "programs", "num_warps", "num_stages"}),
    ):
        assert len({tuple(sorted(c.items())) for c in candidates}) == len(candidates)
        for c in candidates:
            assert set(c) - {"R"} == keys and c["BW"] >= 16 and c["num_warps"] in (4, 8)
            assert c.get("R", 1) in (1, 4)
    common = {"BC", "BW", "num_warps", "num_stages"}
    for candidates, keys in (
        (tuning.STRIDED_FWD_CANDIDATES, common | {"BM"}),
        (tuning.STRIDED_WGRAD_CANDIDATES, common | {"BR", "programs"}),
    ):
        assert len({tuple(sorted(c.items())) for c in candidates}) == len(candidates)
        for c in candidates:  # tl.dot needs 16 rows and columns; BC is the batch of the product
            assert set(c) == keys and c["BW"] >= 16 and c.get("BM", c.get("BR")) >= 16


def test_in_place_kernels_are_keyed_by_layout(fresh):
    """The kernels that read any layout keep one choice per shape and layout."""
    x = torch.empty(2, 8, 6, 7)
    cl = x.contiguous(memory_format=torch.channels_last)
    w = torch.empty(8, 1, 5, 5)
    seen = []

    def run(cfg):
        seen.append(cfg)

    for t in (x, cl, cl):
        tuning.strided_forward_config(t, w, (6, 7), run)
    keys = [k for k in fresh.TUNED if k.startswith("sfwd")]
    assert len(keys) == 2 and {k.split("|")[0] for k in keys} == {"sfwd-nchw", "sfwd-cl"}
