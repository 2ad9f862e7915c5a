"""reproduce.readme_tables: the README's result tables come from the committed files."""

import json
from pathlib import Path

import pytest

from reproduce import readme_tables

README = Path(__file__).resolve().parents[1] / "README.md"


def summary(dsc_07, dsc_26, **variant):
    def entry(values, oracle):
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        return {"dsc": {"mean": mean, "std": std}, "sensitivity": {"mean": 0.5, "std": 0.0},
                "specificity": {"mean": 0.999, "std": 0.001}, "threshold_dsc": oracle,
                "above_oracle": sum(v > oracle for v in values)}

    return {"seeds": [0, 1], "seconds": {"training": [100.0, 140.0, 120.0]},
            "variant": {"phantom_version": 3, "recipe": {"name": "randomized"},
                        "phantom_subjects": 60, "phantom_spacing": 2.0,
                        "intensity_normalization": "zscore", "intensity_augmentation": False,
                        "mirror_axes": [], **variant},
            "subjects": {"patient07": entry(dsc_07, 0.2056), "patient26": entry(dsc_26, 0.3597)}}


def test_a_row_per_summary_with_mean_std_and_seeds_above_the_oracle(tmp_path):
    (tmp_path / "a-seeds.json").write_text(json.dumps(summary([0.10, 0.30], [0.5, 0.6])))
    (tmp_path / "b-seeds.json").write_text(json.dumps(summary(
        [0.2, 0.2], [0.4, 0.4], mirror_axes=[0], intensity_normalization="wm-peak",
        foreground_ratio=0.33)))
    lines = readme_tables.render_sim2real(tmp_path).splitlines()
    assert len(lines) == 2 + 2 + 1
    # 07: mean 20.00, population std 10.00, one of two seeds above 20.56 (0.30);
    # 26: 55.00 ± 5.00, both above 35.97; training seconds 100, 120, 140: median 120.
    assert lines[2] == ("| v3 randomized (60 subjects, 2 mm) | `a-seeds.json` | 2 | 20.00 ± 10.00 "
                        "(1/2) | 50.00 ± 0.00 | 99.90 ± 0.10 | 55.00 ± 5.00 (2/2) "
                        "| 50.00 ± 0.00 | 99.90 ± 0.10 | 120 |")
    assert ("wm-peak normalisation, 0.33 of patches on lesions, + mirroring x | `b-seeds.json`"
            in lines[3])
    assert lines[4].startswith("| FLAIR-threshold oracle") and "| 20.56 |" in lines[4]


def test_an_ensemble_is_one_run_without_a_spread(tmp_path):
    one = summary([0.1534], [0.6])
    one["seeds"] = ["ensemble of seeds 0, 1"]
    one["variant"]["ensemble"] = 2
    (tmp_path / "e-seeds.json").write_text(json.dumps(one))
    row = readme_tables.render_sim2real(tmp_path).splitlines()[2]
    assert "ensemble of 2 seeds' networks | `e-seeds.json` | 1 | 15.34 (0/1) | 50.00 |" in row


def test_check_and_write_the_readme_block(tmp_path, capsys):
    (tmp_path / "a-seeds.json").write_text(json.dumps(summary([0.1, 0.3], [0.5, 0.6])))
    readme = tmp_path / "README.md"
    begin, end = readme_tables.markers("sim2real-v3")
    other = "\n".join(readme_tables.markers("table1-v3"))
    readme.write_text(f"intro\n{begin}\nold numbers\n{end}\nrest\n{other}\n")
    args = ["--sim2real", str(tmp_path), "--table1", str(tmp_path / "none.json")]
    assert readme_tables.main([*args, "--check", str(readme)]) == 1
    assert "differs" in capsys.readouterr().err
    assert readme_tables.main([*args, "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and f"{end}\nrest\n" in text
    assert "No committed run yet" in text
    assert "old numbers" not in text and "20.00 ± 10.00" in text
    assert readme_tables.main([*args, "--check", str(readme)]) == 0


@pytest.mark.parametrize("content, message", [
    ("no markers\n", "needs the line"),
    ("{0}\n{0}\n{1}\n".format(*readme_tables.markers("sim2real-v3")), "needs the line"),
])
def test_a_readme_without_one_pair_of_markers_is_one_line(tmp_path, capsys, content, message):
    (tmp_path / "a-seeds.json").write_text(json.dumps(summary([0.1], [0.5])))
    (tmp_path / "README.md").write_text(content)
    assert readme_tables.main(["--sim2real", str(tmp_path), "--check",
                               str(tmp_path / "README.md")]) == 1
    assert message in capsys.readouterr().err


def test_an_empty_results_folder_is_one_line(tmp_path, capsys):
    assert readme_tables.main(["--sim2real", str(tmp_path)]) == 1
    assert "no *-seeds.json" in capsys.readouterr().err


def test_the_committed_readme_shows_the_committed_results():
    assert readme_tables.main(["--check", str(README)]) == 0


def test_table1_over_seeds_beside_the_papers_with_how_it_was_made(tmp_path):
    rows = [{"alpha": a, "beta": b, "n_seeds": 5, "collapsed_cells": 0,
             "mean": {m: 0.5 for m in ("dsc", "sensitivity", "specificity", "f2", "apr")},
             "std": {m: 0.01 for m in ("dsc", "sensitivity", "specificity", "f2", "apr")}}
            for a, b in ((0.5, 0.5), (0.4, 0.6), (0.3, 0.7), (0.2, 0.8), (0.1, 0.9))]
    made = {"command": ["python", "-m", "reproduce.table1", "--seeds", "5"],
            "date": "2026-12-02T19:00:00+00:00", "commit": "abcdef0123", "seconds": 4800.0,
            "machine": {"cores": 2, "cpu": "AMD EPYC"}}
    (tmp_path / "t.json").write_text(json.dumps({"rows": rows, "made": made,
                                                 "cell_seconds": [960.0, 1003.0]}))
    text = readme_tables.render_table1(tmp_path / "t.json")
    # The paper's a=0.3, b=0.7 row: DSC 56.42 (../shared/PAPER.md).
    assert "| a=0.3, b=0.7 | 5 | 0 | 50.00 ± 1.00 / 56.42 |" in text
    assert text.endswith("Made by `python -m reproduce.table1 --seeds 5` (assembled on 2026-12-02 "
                         "at commit abcdef0, 2 cores of an AMD EPYC); its cells took 16.0, 16.7 "
                         "min per seed's grid of 10 (their own times, without the phantom's "
                         "generation and the figures).")


def test_results_pages_are_written_then_checked_and_a_hand_edit_is_caught(tmp_path, capsys):
    (tmp_path / "a-seeds.json").write_text(json.dumps(summary([0.1, 0.3], [0.5, 0.6])))
    args = ["--sim2real", str(tmp_path), "--table1", str(tmp_path / "none.json")]
    pages = tmp_path / "pages"
    assert readme_tables.main([*args, "--check-docs", str(pages)]) == 1  # none written yet
    assert readme_tables.main([*args, "--docs", str(pages)]) == 0
    text = (pages / "sim2real.md").read_text()
    assert text.startswith("<!-- generated by python -m reproduce.readme_tables --docs")
    assert "\n# Sim-to-real on the development patients\n" in text and "20.00 ± 10.00" in text
    assert readme_tables.main([*args, "--check-docs", str(pages)]) == 0
    (pages / "sim2real.md").write_text(text.replace("20.00 ± 10.00", "21.00 ± 10.00"))
    capsys.readouterr()
    assert readme_tables.main([*args, "--check-docs", str(pages)]) == 1
    assert "sim2real.md: differs" in capsys.readouterr().err


def test_the_committed_results_pages_show_the_committed_results():
    docs = README.parent / "docs" / "results"
    assert readme_tables.main(["--check-docs", str(docs)]) == 0


def benchmark_run(**extra):
    rows = [{"section": "training step", "measure": "quick step", "ours": 0.10759, "unit": "s/step",
             "peer": 0.20079, "peer_name": "PyTorch + MONAI", "note": "", "speedup": 1.86623},
            {"section": "inference", "measure": "scan", "ours": 8.1318, "unit": "s/scan",
             "peer": None, "peer_name": "", "note": "max |ours - MONAI| = 4.1e-04",
             "speedup": None},
            {"section": "training step", "measure": "peak RSS", "ours": 1136.9, "unit": "MiB",
             "peer": None, "peer_name": "", "note": "", "speedup": None}]
    return {"date": "2026-11-30T11:32:51+00:00", "command": "python -m benchmarks ",
            "machine": {"cpu": "AMD EPYC", "cores": 2, "clock_mhz": 2596.144,
                        "clock_source": "/proc/cpuinfo cpu MHz", "fp32_peak_gflops": 166.15,
                        "fp32_peak_flops_per_cycle": 32, "fp32_peak_gflops_avx512": 332.3,
                        "avx512": True, "load_average": [1.59, 1.7, 1.4]},
            "versions": {"python": "3.11.7", "keras": "3.15.1", "keras_backend": "tensorflow",
                         "torch": None},
            "before": {"load_average": [0.83, 1.0, 1.1]}, "after": {"load_average": [1.59, 1, 1]},
            "wall_s": 493.8, "rows": rows, "sections": {}, **extra}


def test_benchmarks_a_table_per_section_in_the_runs_order_with_how_it_was_made(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(benchmark_run()))
    text = readme_tables.render_benchmarks(tmp_path / "results.json")
    assert text.startswith("Made by `python -m benchmarks`, finished 2026-11-30 at 11:32 +00:00 "
                           "(no commit recorded), in 494 s. Machine: 2 cores of an AMD EPYC, "
                           "2596 MHz (/proc/cpuinfo cpu MHz), fp32 peak 166 GFLOP/s")
    assert ("Versions: python 3.11.7, keras 3.15.1 (backend tensorflow); not installed: torch. "
            "1-minute load average 0.83 before, 1.59 after.") in text
    # three significant digits, thousands separated; a pipe inside a cell is escaped
    assert text.index("## training step") < text.index("## inference")
    assert "| quick step | 0.108 | 0.201 | s/step | 1.87x | PyTorch + MONAI |  |" in text
    assert "| peak RSS | 1,137 |  | MiB |  |  |  |" in text
    assert "| scan | 8.13 |  | s/scan |  |  | max \\|ours - MONAI\\| = 4.1e-04 |" in text
    assert "GEMM" not in text and "Loss values" not in text


def test_benchmarks_record_the_commit_the_gemm_reading_and_the_loss_values(tmp_path):
    run = benchmark_run(commit="abcdef0123")
    run["machine"]["gemm_gflops"] = 101.3
    run["sections"]["loss"] = {"values": {"ours": 0.86253923}, "alpha": 0.3, "beta": 0.7,
                               "smooth": 1e-05, "keras_alpha_weighs": "false negatives",
                               "keras_probe_value": 0.5}
    (tmp_path / "results.json").write_text(json.dumps(run))
    text = readme_tables.render_benchmarks(tmp_path / "results.json")
    assert "+00:00 at commit abcdef0, in 494 s" in text
    assert "a 1024² fp32 NumPy GEMM at 101.3 GFLOP/s" in text
    assert "| ours | 0.8625392 |" in text and "weighs **false negatives**" in text
    assert readme_tables.render_benchmarks(tmp_path / "none.json").startswith("(No committed run")


def grid_timing(with_cpu):
    runs = [{"version": v, "cells": {"a0.3_b0.7/fold0": s}, "total": s}
            for v, s in ((2, 100.0), (3, 130.0), (3, 120.0), (2, 110.0))]
    timing = {"made": {"command": ["python", "-m", "benchmarks.bench_grid_versions"],
                       "date": "2026-12-03T10:00:00+00:00", "commit": "abcdef0123",
                       "machine": {"cores": 2, "cpu": "AMD EPYC"}},
              "profile": "quick", "runs": runs,
              "total_seconds": {"v2": 210.0, "v3": 250.0}, "ratio_v3_over_v2": 250.0 / 210.0}
    if with_cpu:
        for run, cpu in zip(runs, (180.0, 190.0, 185.0, 175.0)):
            run["cpu_seconds"] = cpu
        timing.update(cpu_seconds={"v2": 355.0, "v3": 375.0}, cpu_ratio_v3_over_v2=375 / 355)
    return timing


@pytest.mark.parametrize("with_cpu", [False, True])
def test_the_grid_versions_timing_shows_cpu_time_only_where_it_was_recorded(tmp_path, with_cpu):
    path = tmp_path / "grid-versions.json"
    path.write_text(json.dumps(grid_timing(with_cpu)))
    text = readme_tables.render_grid_versions(path)
    assert "v3 / v2: 1.190 (250.0 s against 210.0 s in all)." in text
    assert ("command CPU seconds" in text) == with_cpu
    if with_cpu:
        assert "| 1 | v3 | a0.3_b0.7/fold0 130.0 | 190.0 |" in text
        assert "v3 / v2: 1.056 (375.0 s against 355.0 s)" in text
    else:
        assert "| 1 | v3 | a0.3_b0.7/fold0 130.0 |" in text
    assert "commit abcdef0, 2 cores" in text


def test_a_timing_made_with_uncommitted_changes_says_so(tmp_path):
    timing = grid_timing(True)
    timing["made"]["uncommitted_changes"] = True
    (tmp_path / "t.json").write_text(json.dumps(timing))
    assert "commit abcdef0 with uncommitted changes, 2 cores" in \
        readme_tables.render_grid_versions(tmp_path / "t.json")


def with_baselines(record, loo, phantom, sensitivities=None, core=None):
    """``record`` with FLAIR-threshold baselines (DSC per subject), the core-statistics
    phantom baseline's when ``core`` is given, and per-seed sensitivities."""
    record["baselines"] = {
        "phantom_k": 2.4, "phantom_dsc": 0.5, "n_phantom_subjects": 60,
        "subjects": {s: {"leave_one_out": {"k": 1.7, "dsc": loo[s], "sensitivity": 0.3,
                                           "specificity": 0.99},
                         "phantom": {"k": 2.4, "dsc": phantom[s], "sensitivity": 0.1,
                                     "specificity": 0.999}}
                     for s in ("patient07", "patient26")}}
    if core is not None:
        record["baselines"] |= {"core_mm": 6.0, "phantom_core_k": 2.41}
        for s, dsc in core.items():
            record["baselines"]["subjects"][s]["phantom_core"] = {
                "k": 2.41, "dsc": dsc, "sensitivity": 0.2, "specificity": 0.998}
    for subject, values in (sensitivities or {}).items():
        record["subjects"][subject]["sensitivity"]["values"] = values
    for subject in record["subjects"]:
        record["subjects"][subject]["sensitivity"].setdefault("values", [0.5, 0.5])
    return record


@pytest.mark.parametrize("loo, phantom, sensitivities, core, verdict, collapsed", [
    ({"patient07": 0.10, "patient26": 0.20}, {"patient07": 0.05, "patient26": 0.30}, None,
     None, "it beats every baseline on every development patient", False),
    ({"patient07": 0.14, "patient26": 0.02}, {"patient07": 0.16, "patient26": 0.0}, None,
     None, "it does **not** beat every baseline", False),
    ({"patient07": 0.10, "patient26": 0.20}, {"patient07": 0.05, "patient26": 0.30},
     {"patient07": [0.5, 0.0], "patient26": [0.4, 0.0]}, None, "it beats every baseline", True),
    # The core-statistics phantom baseline above the network on patient07 (0.12).
    ({"patient07": 0.10, "patient26": 0.20}, {"patient07": 0.05, "patient26": 0.30}, None,
     {"patient07": 0.125, "patient26": 0.2}, "it does **not** beat every baseline", False),
])
def test_the_readme_sentence_says_whether_the_default_beats_every_baseline(
        tmp_path, loo, phantom, sensitivities, core, verdict, collapsed):
    # patient07 0.12 ± 0.02 and patient26 0.45 ± 0.05 over two seeds
    record = with_baselines(summary([0.10, 0.14], [0.40, 0.50]), loo, phantom, sensitivities,
                            core)
    (tmp_path / readme_tables.DEFAULT_SIM2REAL).write_text(json.dumps(record))
    text = readme_tables.render_sim2real_baselines(tmp_path)
    assert verdict in text
    assert "patient07 12.0 ± 2.0 against " + f"{100 * loo['patient07']:.1f}" in text
    assert ("1 of the 2 seeds' networks called no lesion" in text) is collapsed
    assert ("12.5 (core statistics, k from the phantom)" in text) is (core is not None)
    (tmp_path / readme_tables.DEFAULT_SIM2REAL).unlink()
    assert "No committed run" in readme_tables.render_sim2real_baselines(tmp_path)


def test_the_readme_sentence_on_a_union_default_gives_the_networks_alone_beside_it(tmp_path):
    loo, phantom = {"patient07": 0.10, "patient26": 0.02}, {"patient07": 0.15, "patient26": 0.0}
    united = with_baselines(summary([0.16, 0.20], [0.40, 0.50]), loo, phantom)
    united["variant"]["threshold_union_k"] = 2.4419
    alone = with_baselines(summary([0.10, 0.14], [0.40, 0.0]), loo, phantom,
                           {"patient07": [0.3, 0.0], "patient26": [0.4, 0.0]})
    (tmp_path / readme_tables.DEFAULT_SIM2REAL).write_text(json.dumps(united))
    text = readme_tables.render_sim2real_baselines(tmp_path)
    assert "united with the FLAIR threshold z >= 2.44 whose k was chosen on the phantom alone" \
        in text
    assert "patient07 18.0 ± 2.0 against 10.0" in text and "beats every baseline" in text
    assert "networks alone" not in text  # their summary is not committed
    (tmp_path / readme_tables.network_alone_name(readme_tables.DEFAULT_SIM2REAL)).write_text(
        json.dumps(alone))
    text = readme_tables.render_sim2real_baselines(tmp_path)
    assert "the same networks alone score patient07 12.0 ± 2.0; patient26 20.0 ± 20.0" in text
    assert "1 of the 2 seeds' networks called no lesion at all" in text
    # A core-statistics union: its depth in the sentence, and the networks alone are the
    # same name without the union's suffix.
    assert readme_tables.network_alone_name("x-mirror-x-union-core6-seeds.json") == \
        "x-mirror-x-seeds.json"
    united["variant"]["threshold_union_core_mm"] = 6.0
    (tmp_path / readme_tables.DEFAULT_SIM2REAL).write_text(json.dumps(united))
    assert "z >= 2.44 (its mean and std from the brain deeper than 6 mm) whose k" in \
        readme_tables.render_sim2real_baselines(tmp_path)


def test_the_readme_sentence_names_a_stronger_threshold_of_another_phantom(tmp_path):
    """The default beats its own phantom's baselines, but another committed summary's
    phantom gives a threshold above it on patient07: the sentence says so, with that
    phantom and k; a weaker one elsewhere is not mentioned."""
    loo, phantom = {"patient07": 0.10, "patient26": 0.02}, {"patient07": 0.11, "patient26": 0.0}
    default = with_baselines(summary([0.10, 0.14], [0.40, 0.50]), loo, phantom)
    (tmp_path / readme_tables.DEFAULT_SIM2REAL).write_text(json.dumps(default))
    text = readme_tables.render_sim2real_baselines(tmp_path)
    assert "it beats every baseline" in text and "another committed phantom" not in text
    other = with_baselines(summary([0.1, 0.1], [0.3, 0.3]), loo, phantom,
                           core={"patient07": 0.201, "patient26": 0.3})
    other["variant"]["recipe"]["name"] = "calibrated"
    (tmp_path / "other-seeds.json").write_text(json.dumps(other))
    text = readme_tables.render_sim2real_baselines(tmp_path)
    assert ("but a threshold of another committed phantom scores higher on patient07 20.1 "
            "(core statistics, k from the phantom, the calibrated phantom's k = 2.41)") in text
    assert "patient26 30.0" not in text  # below the default's 45.0 there
