"""bench/bench_methods_wallclock.py's verdict: each method against its own seed's mezo run."""
from bench.bench_methods_wallclock import verdict


def _run(name, method, seed, points):
    return {"name": name, "method": method, "seed": seed,
            "points": [{"step": s, "train_s": t, "test_acc": a} for s, t, a in points]}


def test_verdict_compares_each_seed_with_its_own_mezo_run():
    runs = [_run("mezo", "mezo", 0, [(150, 300.0, 0.60), (300, 600.0, 0.65)]),
            _run("mezo", "mezo", 1, [(150, 310.0, 0.58), (300, 620.0, 0.70)]),
            # seed 0: reaches 0.65 at 290 s <= 600 / 2
            _run("block", "block", 0, [(100, 150.0, 0.61), (200, 290.0, 0.65), (300, 450.0, 0.66)]),
            # seed 1: 0.69 never reaches seed 1's 0.70 (seed 0's 0.65 would have counted)
            _run("block", "block", 1, [(100, 150.0, 0.66), (200, 300.0, 0.69)]),
            # reaches it, but after half of mezo's wall-clock (301 s > 300 s)
            _run("fzoo", "fzoo", 0, [(10, 301.0, 0.66)])]
    got = {(v["name"], v["seed"]): v for v in verdict(runs)}
    assert set(got) == {("block", 0), ("block", 1), ("fzoo", 0)}
    assert got[("block", 0)]["met"] and got[("block", 0)]["reached_at_step"] == 200
    assert got[("block", 0)]["fraction_of_mezo_s"] == 290.0 / 600.0
    assert not got[("block", 1)]["met"] and got[("block", 1)]["reached_at_step"] is None
    assert got[("block", 1)]["mezo_test_acc"] == 0.70
    assert not got[("fzoo", 0)]["met"] and got[("fzoo", 0)]["reached_at_s"] == 301.0


def test_no_verdict_without_a_mezo_run_of_the_seed():
    assert verdict([_run("block", "block", 0, [(100, 150.0, 0.61)])]) == []


def test_a_pilot_of_fewer_than_three_steps_is_refused(capsys, tmp_path):
    """The first two steps compile kernels, so a shorter pilot has no step to price: exit 2, one
    line naming the flag, and nothing run (no run folder made)."""
    import pytest
    from bench.bench_methods_wallclock import main
    with pytest.raises(SystemExit) as e:
        main(["--budget_s", "1", "--pilot_steps", "2", "--runs_dir", str(tmp_path / "runs")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "error: --pilot_steps 2: needs 3 or more (the first two steps compile the kernels)")
    assert not (tmp_path / "runs").exists()
