"""Compute against accuracy: the sweep's exit criteria (--exit, read off the fixed budgets' trajectory = separate
runs), Pareto fronts and the leaderboard's front table and longest-length column on synthetic rows, and data seeds
(--seeds: a folder per seed, the report's mean and spread)."""

import json
import math

import pytest

from implicit_ssm_eval.harness import fronts, report
from implicit_ssm_eval.harness.leaderboard import front_table, group_table
from implicit_ssm_eval.harness.report_cli import render_report
from implicit_ssm_eval.harness.results import load_runs
from implicit_ssm_eval.harness.sweep import SweepSpec, anytime_groups, plan, run_sweep
from implicit_ssm_eval.harness.sweep_cli import seeded, spec_from, sweep_parser
from implicit_ssm_eval.model_adapters.config import ConfigError

EXITS = ("kl=0.001", "argmax=2")


def spec(checkpoints, **kw) -> SweepSpec:
    base = dict(checkpoints=tuple(checkpoints), tasks=("st_parity_id",), max_iters=(2, 6), tols=(0.0,),
                adaptive_max_iter=6, metadata={"st_num_docs": 4}, batch_size=8, modes=("simultaneous",), exits=EXITS)
    return SweepSpec(**{**base, **kw})


def by_budget(folder) -> dict:
    out = {}
    for run in load_runs([folder]).runs:
        conv = run.info["tasks"]["st_parity_id"]["convergence"]
        out[json.dumps(run.budget, sort_keys=True)] = (run.results["st_parity_id"]["acc,none"],
                                                       conv["iterations_mean"], conv["fraction_converged"])
    return out


# -- the sweep -------------------------------------------------------------------------------------------------------
def test_exit_flags_become_budgets_in_every_mode_and_ride_on_the_trajectory(parity_checkpoints):
    args = sweep_parser().parse_args([str(parity_checkpoints["implicit"]), "--exit", "kl", "argmax:2,4",
                                      "--exit-threshold", "1e-2", "1e-3", "--modes", "simultaneous", "sequential",
                                      "--max-iter", "2", "6", "--tol", "0", "--adaptive-max-iter", "6"])
    s = spec_from(args)
    assert s.exits == ("kl=0.01", "kl=0.001", "argmax=2", "argmax=4")
    jobs = plan(s)
    keys = {j.key for j in jobs}
    assert {"k6_tol0.001_tau0.8_simultaneous_fixed_point_kl", "k6_tol4.0_tau0.8_sequential_fixed_point_argmax"} <= keys
    assert "k6_tol0_tau0.8_simultaneous_fixed_point" in keys and len(keys) == 12  # 2 fixed + 4 exits, 2 modes
    groups = sorted(anytime_groups(jobs, s), key=len)
    assert [len(g) for g in groups] == [1] * 6 + [6]  # the simultaneous exits ride with k = 2, 6
    capped = anytime_groups(plan(spec_from(sweep_parser().parse_args(
        [str(parity_checkpoints["implicit"]), "--exit", "kl:0.01", "--modes", "simultaneous", "--max-iter", "2",
         "6", "--tol", "0"]))), s)  # capped at 256, not 6: a trajectory of 6 cannot serve it
    assert sorted(len(g) for g in capped) == [1, 2]


@pytest.mark.parametrize("argv,match", [
    (["--exit-threshold", "0.1"], "--exit-threshold needs --exit"),
    (["--exit", "kl"], "--exit kl needs thresholds"),
    (["--exit", "kl", "--exit-threshold", "0"], "exit=kl needs tol > 0"),
])
def test_exit_flags_are_validated(parity_checkpoints, argv, match):
    with pytest.raises(ConfigError, match=match):
        spec_from(sweep_parser().parse_args([str(parity_checkpoints["implicit"]), *argv]))


@pytest.mark.parametrize("value,match", [("halting:0.1", "unknown exit criterion 'halting'"),
                                         ("argmax:1.5", "integer >= 1"), ("kl:x", "numbers separated by commas")])
def test_exit_values_are_refused_by_the_parser(value, match, capsys):
    with pytest.raises(SystemExit):
        sweep_parser().parse_args(["--exit", value])
    assert match in capsys.readouterr().err


def test_exits_read_off_the_trajectory_equal_separate_runs(parity_checkpoints, tmp_path):
    ckpt = [parity_checkpoints["implicit"]]
    riding = run_sweep(spec(ckpt), tmp_path / "riding", progress=False)
    alone = run_sweep(spec(ckpt, anytime=False), tmp_path / "alone", progress=False)
    assert not riding.failed and not alone.failed and len(riding.ran) == 4
    a, b = by_budget(tmp_path / "riding"), by_budget(tmp_path / "alone")
    assert a.keys() == b.keys() and len(a) == 4
    for key in a:
        assert a[key] == pytest.approx(b[key]), key
    kl = next(v for k, v in a.items() if '"kl"' in k)
    assert kl[1] < 6 and kl[2] == 1.0  # the contractive model meets the threshold before the cap
    record = json.loads(next((tmp_path / "riding").glob("*/*_kl/results.json")).read_text())
    assert record["sweep"]["anytime_of"] == "k6_tol0_tau0.8_simultaneous_fixed_point"


def test_an_exit_whose_trajectory_is_done_runs_alone(parity_checkpoints, tmp_path):
    ckpt = [parity_checkpoints["implicit"]]
    run_sweep(spec(ckpt, exits=()), tmp_path, progress=False)
    outcome = run_sweep(spec(ckpt), tmp_path, progress=False)
    assert len(outcome.skipped) == 2 and len(outcome.ran) == 2 and not outcome.failed
    record = json.loads(next(tmp_path.glob("*/*_argmax/results.json")).read_text())
    assert "anytime_of" not in record["sweep"]


# -- seeds -----------------------------------------------------------------------------------------------------------
def test_seeds_sweep_a_folder_each_and_the_report_gives_mean_and_spread(parity_checkpoints, tmp_path):
    s = spec([parity_checkpoints["implicit"]], exits=(), max_iters=(2,), metadata={"st_num_docs": 8})
    runs = seeded(s, tmp_path, [0, 1, 2])
    assert [out.name for _, out in runs] == ["seed0", "seed1", "seed2"]
    assert [r[0].metadata["st_seed"] for r in runs] == [0, 1, 2] and runs[0][0].metadata["babi_seed"] == 0
    for one, out in runs:
        run_sweep(one, out, progress=False)
    loaded = load_runs([tmp_path])
    rows = [r for r in report.tidy_rows(loaded.runs) if r["metric"] == "acc"]
    assert sorted(r["seed"] for r in rows) == [0, 1, 2] and len({r["data_hash"] for r in rows}) == 3
    (merged,) = [r for r in report.merge_seeds(rows) if r["metric"] == "acc"]
    values = [r["value"] for r in rows]
    mean = sum(values) / 3
    assert merged["seeds"] == 3 and merged["value"] == pytest.approx(mean)
    assert merged["spread"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 2))
    text = render_report(loaded, tmp_path / "report", "cmd", {})
    assert f"{mean:.3f}±{merged['spread']:.3f}" in text
    assert "data seeds 0, 1, 2 (each score: the mean over the seeds ± their standard deviation)" in text, text[:600]
    assert text.splitlines()[2].startswith("commit") and "'st_seed'" not in text.splitlines()[2]  # the header
    with pytest.raises(ConfigError, match="st_seed"):
        seeded(SweepSpec(checkpoints=(), metadata={"st_seed": 4}), tmp_path, [0])



def test_another_models_runs_at_other_seeds_are_all_kept_and_merged(tmp_path):
    """lm-eval `hf` results at two data seeds (the same model_args, other task parameters): both runs are read, not
    one taken for a copy of the other, and the leaderboard row is their mean ± spread."""
    for seed, acc in ((0, 0.70), (1, 0.80)):
        data = {"results": {"st_parity_id": {"alias": "st_parity_id", "acc,none": acc, "acc_stderr,none": 0.05}},
                "configs": {"st_parity_id": {"task": "st_parity_id", "metadata": {"st_seed": seed, "st_num_docs": 8}}},
                "config": {"model": "hf", "model_args": "pretrained=/m/parity-transformer"}, "date": 1.0 + seed}
        folder = tmp_path / f"seed{seed}" / "parity-transformer" / "hf"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(data))
    loaded = load_runs([tmp_path])
    assert len(loaded.runs) == 2 and not loaded.skipped
    rows = [r for r in report.tidy_rows(loaded.runs) if r["metric"] == "acc"]
    assert sorted(r["seed"] for r in rows) == [0, 1]
    (merged,) = report.merge_seeds(rows)
    assert merged["seeds"] == 2 and merged["value"] == pytest.approx(0.75)
    assert merged["spread"] == pytest.approx(math.sqrt(2 * 0.05**2))



def test_agreement_rows_of_several_seeds_say_their_seed():
    from implicit_ssm_eval.harness.leaderboard import _agreement_section

    def agree(seed, value):
        return {"checkpoint": "m", "reading": "blockwise 8", "max_iter": 0, "tol": 0.01, "positions": 10,
                "agreement": value, "seed": seed}

    lines = "\n".join(_agreement_section([agree(1, 0.9), agree(0, 0.8)])).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    assert cells[0] == ["model", "reading", "budget", "data seed", "positions", "agreement"]
    assert [row[3:] for row in cells[1:]] == [["0", "10", "0.8"], ["1", "10", "0.9"]]  # in seed order
    assert "data seed" not in "\n".join(_agreement_section([agree(0, 0.8)]))


# -- fronts and tables on synthetic rows ------------------------------------------------------------------------------
def row(label: str, value: float, cost: float, bucket: str = "b1", checkpoint: str = "m", metric: str = "acc",
        length: int = 10, **kw) -> dict:
    fixed = "=" not in label  # "k4"; "kl=0.01" an exit criterion at a threshold
    exit, _, tol = label.partition("=")
    base = dict(checkpoint=checkpoint, kind="implicit", group="g", task=f"g_{bucket}", bucket=bucket, shift=None,
                multiplier=1, length_min=length, length_max=length, max_iter=int(cost) if fixed else 64,
                tol=0.0 if fixed else float(tol), exit=None if fixed else exit, tau=0.8, solver="fixed_point",
                mode="simultaneous", block_size=None, metric=metric, value=value, stderr=0.01, chance=0.5,
                iters_mean=cost, iters_per_token=cost, run_iters_mean=cost, fraction_unconverged=0.0, status="ok",
                error=None)
    return {**base, **kw}


ROWS = [row("k1", 0.50, 1), row("k4", 0.80, 4), row("k16", 0.95, 16), row("k64", 0.955, 64),
        row("kl=0.01", 0.90, 3), row("kl=0.001", 0.949, 6), row("argmax=2", 0.70, 5), row("residual=0.05", 0.95, 20)]


def test_the_pareto_front_is_the_undominated_points():
    pts = fronts.points(ROWS, "acc")["m"]
    front = {(p.family, p.cost) for p in pts if p.on_front}
    assert front == {("fixed", 1), ("kl", 3), ("kl", 6), ("fixed", 16), ("fixed", 64)}
    assert [p.cost for p in pts] == sorted(p.cost for p in pts)


def test_lower_is_better_turns_the_front_around():
    rows = [row("k1", 2.0, 1, metric="bits_per_byte"), row("k4", 1.5, 4, metric="bits_per_byte"),
            row("kl=0.01", 1.6, 3, metric="bits_per_byte"), row("argmax=2", 1.9, 5, metric="bits_per_byte")]
    pts = fronts.points(rows, "bits_per_byte")["m"]
    assert {p.cost for p in pts if p.on_front} == {1, 3, 4}
    best, cheap = fronts.cheapest_within(pts, lower=True, tolerance=0.15)
    assert (best.value, cheap.cost) == (1.5, 3)


def test_the_front_table_names_the_cheapest_budget_within_a_hundredth_of_the_best():
    best, cheap = fronts.cheapest_within(fronts.points(ROWS, "acc")["m"], lower=False)
    assert (best.value, cheap.value, cheap.cost) == (0.955, 0.949, 6)  # kl=0.001: 6 iterations, not 64
    table = front_table(ROWS, ["b1"], "acc")
    line = next(line for line in table.splitlines() if line.startswith("| m "))
    assert "kl=0.001 (≤64), simultaneous" in line and "0.955" in line and "6.0" in line


def test_the_longest_length_at_ninety_percent():
    rows = [row("k4", v, 4, bucket=b, length=n) for b, v, n in (("b1", 0.99, 10), ("b2", 0.91, 20), ("b3", 0.6, 40))]
    rows += [row("k1", 0.5, 1, bucket=b, length=n) for b, n in (("b1", 10), ("b2", 20), ("b3", 40))]
    text, _ = group_table(rows, ["b1", "b2", "b3"], longest=True)
    lines = {line.split("|")[3].strip(): line.split("|")[-2].strip() for line in text.splitlines()[2:]}
    assert lines == {"k=4, simultaneous": "20", "k=1, simultaneous": "–"}
