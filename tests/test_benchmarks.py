"""benchmarks: the suite's own arithmetic: FLOP counts, peaks, the PyTorch twin, Keras' convention."""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_inference import window_count
from benchmarks.bench_loss import keras_alpha_weighs
from benchmarks.flops import conv_forward_flops, cpu_clock_mhz, fp32_peak_flops, training_flops
from benchmarks.measure import Row
from benchmarks.workload import paper_grid_steps
from processes import assert_sigterm_stops_the_child
from tversky_keras.losses import tversky_loss
from tversky_keras.models import unet3d
from tversky_keras.training import TrainConfig, build_model


def test_conv_flops_match_a_hand_count():
    # unet3d(3 channels, 2 classes, base_filters=2, depth=1) on a 4^3 input:
    # encoder 3->2: 2*27*3*2 * 64 voxels = 20736; 2->2: 2*27*2*2*64 = 13824
    # bottleneck on 2^3 = 8 voxels: 2->4: 2*27*2*4*8 = 3456; 4->4: 6912
    # transposed 4->2, 2^3 kernel, per input voxel: 2*8*4*2 * 8 = 1024
    # decoder (2+2)->2: 2*27*4*2*64 = 27648; 2->2: 13824; head 1x1x1 2->2: 2*2*2*64 = 512
    model = unet3d((None, None, None, 3), n_classes=2, base_filters=2, depth=1)
    assert conv_forward_flops(model, (1, 4, 4, 4, 3)) == 87936
    assert conv_forward_flops(model, (5, 4, 4, 4, 3)) == 5 * 87936
    assert training_flops(model, (1, 4, 4, 4, 3)) == 3 * 87936


def test_conv_flops_see_through_the_scan_spec_wrapper():
    config = TrainConfig(base_filters=2, depth=1)
    wrapped = build_model(config)
    bare = unet3d((None, None, None, 3), n_classes=2, base_filters=2, depth=1)
    assert conv_forward_flops(wrapped, (1, 8, 8, 8, 3)) == conv_forward_flops(bare, (1, 8, 8, 8, 3))


@pytest.mark.parametrize("cpuinfo, mhz, source", [
    ("model name\t: X\ncpu MHz\t\t: 2596.122\nbogomips\t: 5192.24\n", 2596.122, "cpu MHz"),
    ("model name\t: X\nBogoMIPS\t: 5000.00\n", 2500.0, "BogoMIPS / 2"),
])
def test_cpu_clock_prefers_cpu_mhz_then_half_bogomips(tmp_path, cpuinfo, mhz, source):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    found, where = cpu_clock_mhz(path)
    assert found == pytest.approx(mhz)
    assert where.endswith(source)


def test_fp32_peak_is_cores_times_clock_times_flops_per_cycle():
    assert fp32_peak_flops(2, 2500.0) == pytest.approx(2 * 2.5e9 * 32)
    assert fp32_peak_flops(2, 2500.0, flops_per_cycle=64) == pytest.approx(2 * 2.5e9 * 64)


@pytest.mark.parametrize("unit, ours, peer, speedup", [
    ("s/step", 0.5, 2.0, 4.0),        # a time: peer / ours
    ("Mvoxel/s", 3.0, 1.5, 2.0),      # a rate: ours / peer
    ("s", 1.0, None, None),
])
def test_row_speedup_is_how_many_times_faster_ours_is(unit, ours, peer, speedup):
    assert Row("s", "m", ours, unit, peer).speedup == speedup


def test_sliding_windows_of_a_1mm_brain():
    # window 96, step 48: 182 -> starts 0, 48, 86; 218 -> 0, 48, 96, 122
    assert window_count((182, 218, 182), (96, 96, 96)) == 3 * 4 * 3


def test_paper_grid_counts_every_training_step():
    # 15 subjects in two folds train on 7 and 8 volumes, batch 1:
    # 5 rows x 1000 epochs x (7 + 8) steps.
    assert paper_grid_steps() == 5 * 1000 * 15


def test_keras_convention_probe_matches_keras_on_random_data(rng):
    """Whatever the probe reports, Keras' loss equals ours with the coefficients it implies."""
    from keras import losses as keras_losses

    truth = (rng.random((1, 6, 5, 4, 1)) < 0.3).astype(np.float32)
    pred = rng.random((1, 6, 5, 4, 1)).astype(np.float32)
    alpha, beta = 0.2, 0.8
    convention, _ = keras_alpha_weighs()
    keras_value = float(keras_losses.tversky(truth, pred, alpha=alpha, beta=beta))
    ours_alpha, ours_beta = (beta, alpha) if convention == "false negatives" else (alpha, beta)
    ours = float(tversky_loss(truth, pred, alpha=ours_alpha, beta=ours_beta)[0])
    assert keras_value == pytest.approx(ours, abs=1e-5)


def test_torch_twin_has_our_parameters_and_computes_our_function(rng):
    torch = pytest.importorskip("torch")
    from benchmarks.torch_unet import copy_keras_weights, twin_of

    model = unet3d((None, None, None, 3), n_classes=2, base_filters=3, depth=2)
    twin = copy_keras_weights(model, twin_of(model))
    assert sum(p.numel() for p in twin.parameters()) == model.count_params()
    image = rng.normal(size=(2, 8, 12, 4, 3)).astype(np.float32)
    ours = np.asarray(model.predict_on_batch(image))
    theirs = twin(torch.from_numpy(image.transpose(0, 4, 1, 2, 3).copy()))
    np.testing.assert_allclose(theirs.detach().numpy().transpose(0, 2, 3, 4, 1), ours, atol=1e-5)


def test_torch_twin_refuses_a_normalized_unet():
    pytest.importorskip("torch")
    from benchmarks.torch_unet import twin_of

    with pytest.raises(ValueError, match="normalization"):
        twin_of(unet3d((None, None, None, 3), base_filters=2, depth=1, normalization="batch"))


def test_peak_rss_reads_vmhwm_in_mib(tmp_path):
    from benchmarks.train_process import peak_rss_mib

    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 9999999 kB\nVmHWM:\t  204800 kB\nVmRSS:\t 1024 kB\n")
    assert peak_rss_mib(status) == 200.0


def test_a_failed_gpu_variant_is_a_one_line_row_and_the_grid_uses_the_best_step(monkeypatch):
    """One variant failing (as float16 pooling does on a CPU) must not stop the others."""
    import argparse

    from benchmarks import gpu

    def step(config, *args, policy=None, **kwargs):
        if policy == "mixed_float16":   # TensorFlow's messages run over several lines
            raise RuntimeError("No registered 'MaxPool3D' OpKernel for 'CPU' devices\n"
                               "  (dtype half)\n\tRegistered: <no registered kernels>")
        return (0.5 if config.data_format == "channels_first" else 0.25), None

    monkeypatch.setattr(gpu, "keras_step_seconds", step)
    monkeypatch.setattr(gpu, "_inference_rows", lambda *a: [])
    monkeypatch.setitem(gpu.VARIANTS, "tensorflow", [
        ("fp32, channels_first", gpu.FIRST), ("mixed_float16", dict(policy="mixed_float16")),
        ("fp32", {})])
    result = gpu.run(argparse.Namespace(dry_run=True, peers=False, repeats=1, budget_s=1.0))
    steps = {row.measure.rsplit("ours ", 1)[1]: row for row in result["rows"]
             if row.unit == "s/step"}
    assert list(steps) == ["fp32, channels_first", "mixed_float16", "fp32"]
    failed = steps["mixed_float16"]
    assert failed.ours is None and failed.note.startswith("failed: RuntimeError: No registered")
    assert "\n" not in failed.note and "\t" not in failed.note
    assert result["step_s"] == {"fp32, channels_first": 0.5, "fp32": 0.25}
    # Each row against the first variant; the grid at the best step.
    assert steps["fp32"].peer == 0.5 and steps["fp32"].speedup == pytest.approx(2.0)
    (grid,) = [row for row in result["rows"] if row.unit == "hours"]
    assert grid.ours == pytest.approx(paper_grid_steps() * 0.25 / 3600)
    assert "(fp32)" in grid.measure


def test_gpu_variants_build_what_their_names_say(monkeypatch):
    """Layout and decoder options reach the built network (and nothing else changes)."""
    import argparse

    from benchmarks import gpu

    built = []
    monkeypatch.setattr(gpu, "keras_step_seconds", lambda config, *a, **k: (
        built.append((config.data_format, k, _types(config))) or (1.0, None)))
    monkeypatch.setitem(gpu.VARIANTS, "tensorflow", [
        ("fp32", {}), ("fp32, channels_first", gpu.FIRST),
        ("mixed, old decoder", dict(policy="mixed_float16", **gpu.OLD_DECODER))])
    monkeypatch.setattr(gpu, "_inference_rows", lambda *a: [])
    gpu.run(argparse.Namespace(dry_run=True, peers=False, repeats=1, budget_s=1.0))
    assert [(fmt, k) for fmt, k, _ in built] == [
        ("channels_last", {}), ("channels_first", {}),
        ("channels_last", {"policy": "mixed_float16"})]
    assert [t["UpConv3D"] for *_, t in built] == [4, 4, 0]
    assert [t["Conv3DTranspose"] for *_, t in built] == [0, 0, 4]


def _types(config):
    from collections import Counter

    from benchmarks.workload import network
    from tversky_keras.training import build_model

    return Counter(type(layer).__name__ for layer in network(build_model(config)).layers)


def test_gpu_all_runs_each_backend_in_one_command_and_keeps_what_a_cut_run_printed(tmp_path):
    """``python -m benchmarks.gpu_all --dry-run`` on the CPU: a child per backend, one report
    with the training step, the grid estimate from it and each policy's inference; a limit
    cuts."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "benchmarks.gpu_all", "--dry-run", "--max-variants", "1",
               "--repeats", "1", "--backends", "tensorflow"]
    cpu = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([*command, "--out", str(tmp_path / "full")], cwd=root, env=cpu,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    results = {r["backend"]: r for r in json.loads((tmp_path / "full" / "gpu.json").read_text())}
    tf = results["tensorflow"]
    assert tf["status"] == "finished"
    rows = tf["json"]["rows"]
    (fp32,) = [row for row in rows if row["unit"] == "s/step"]  # --max-variants 1
    assert fp32["measure"].endswith("ours fp32") and fp32["ours"] > 0
    grid = next(row for row in rows if row["unit"] == "hours")
    assert grid["ours"] == pytest.approx(paper_grid_steps() * fp32["ours"] / 3600)
    for policy in ("float32", "mixed_bfloat16"):
        scans = [row for row in rows if row["unit"] == "s/scan" and f"ours {policy}," in row["measure"]]
        # Windows on the device, windows through the host, the whole volume.
        assert len(scans) == 3 and all(row["ours"] > 0 for row in scans)
        assert "device_windows=False" in scans[1]["measure"]
        assert scans[1]["peer"] == scans[0]["ours"]
    report = (tmp_path / "full" / "gpu.md").read_text()
    assert "## Keras tensorflow: finished" in report and "| GPU | training step" in report

    # Two seconds is too short for TensorFlow to start: cut, nothing finished, exit 1.
    cut = subprocess.run([*command, "--limit", "2", "--out",
                          str(tmp_path / "cut")], cwd=root, env=cpu, capture_output=True, text=True,
                         timeout=120)
    assert cut.returncode == 1
    (result,) = json.loads((tmp_path / "cut" / "gpu.json").read_text())
    assert result["status"].startswith("cut at its limit of 2 s")
    assert "## Keras tensorflow: cut at its limit" in (tmp_path / "cut" / "gpu.md").read_text()


def test_gpu_all_skips_a_backend_that_is_not_installed(tmp_path, monkeypatch):
    from benchmarks import gpu_all

    monkeypatch.setattr(gpu_all, "installed", lambda backend: False)
    assert gpu_all.main(["--backends", "torch,jax", "--out", str(tmp_path)]) == 1
    assert "## Keras jax: not installed: skipped" in (tmp_path / "gpu.md").read_text()


def test_only_the_tf_data_pipeline_imports_tensorflow():
    """The rest of the package loads without TensorFlow, so Keras' jax and torch backends can run it."""
    import ast
    from pathlib import Path

    import tversky_keras

    root = Path(tversky_keras.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "tensorflow" for name in names):
                importers.add(path.relative_to(root).as_posix())
    assert importers == {"data/pipeline.py"}


def test_training_and_inference_modules_load_the_pipeline_only_when_asked():
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import tversky_keras, tversky_keras.training, tversky_keras.inference, reproduce.experiment\n"
        "print('tversky_keras.data.pipeline' in sys.modules)\n"
        "from tversky_keras.data import make_dataset\n"
        "print(make_dataset.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "tversky_keras.data.pipeline"]


def test_scale_sets_are_subjects_at_spacing():
    from benchmarks.bench_scale import parse_sets

    assert parse_sets("8@2,500@4") == [(8, 2.0), (500, 4.0)]
    with pytest.raises(ValueError, match="SUBJECTS@SPACING"):
        parse_sets("96")


def test_scale_copies_are_new_subjects_with_their_own_cache_entries(tmp_path):
    """Hard-linked copies: subject i is original i % n, and every copy has its own cache key."""
    from benchmarks.bench_scale import replicate
    from tversky_keras.data import discover_subjects
    from tversky_keras.data.cache import cache_key

    for name in ("a", "b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for scan in ("T1W", "T2W", "FLAIR", "consensus_gt"):
            (tmp_path / "src" / name / f"{scan}.nii.gz").write_text(name + scan)
    subjects = discover_subjects(replicate(tmp_path / "src", tmp_path / "set", 5))
    assert [s.id for s in subjects] == ["a-000", "a-001", "a-002", "b-000", "b-001"]
    assert subjects[2].images["FLAIR"].read_text() == "aFLAIR"
    assert len({cache_key(s, {}) for s in subjects}) == 5


def test_scale_reads_the_child_peak_and_samples_its_memory(tmp_path):
    import sys

    from benchmarks.bench_scale import run_child

    code = "import time; b = b'x' * (300 << 20); time.sleep(0.6)"
    result = run_child([sys.executable, "-c", code], tmp_path / "log")
    assert result["peak_rss_mib"] >= 300
    assert max(rss for _, rss in result["rss_samples"]) >= 300
    with pytest.raises(RuntimeError, match="exited 3"):
        run_child([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "log")


@pytest.mark.parametrize("argv", [["--limit", "nan"], ["--limit", "inf"], ["--limit", "0"],
                                  ["--max-variants", "0"], ["--max-variants", "-1"],
                                  ["--repeats", "0"], ["--backends", ","],
                                  ["--backends", "torch,torch"], ["--backends", "cuda"]])
def test_gpu_all_refuses_bad_options(argv, capsys):
    from benchmarks import gpu_all

    with pytest.raises(SystemExit) as stopped:
        gpu_all.parse_args(argv)
    assert stopped.value.code == 2 and "error:" in capsys.readouterr().err


def test_gpu_all_counts_a_run_whose_every_row_failed_as_a_failure(tmp_path, monkeypatch):
    from benchmarks import gpu_all

    # A child that writes what `benchmarks --gpu` writes when every measurement failed.
    fake = ("import json, sys; path = sys.argv[sys.argv.index('--json') + 1]; "
            "json.dump({'rows': [{'section': 'GPU', 'measure': 'step', 'ours': None, "
            "'unit': 's/step', 'note': 'failed: X'}], 'sections': {'gpu': {}}, "
            "'versions': {}}, open(path, 'w'))")
    monkeypatch.setattr(gpu_all, "CHILD", ["-c", fake])
    (tmp_path / "gpu.md").write_text("a report from an older run")
    assert gpu_all.main(["--backends", "tensorflow", "--out", str(tmp_path)]) == 1
    (result,) = json.loads((tmp_path / "gpu.json").read_text())
    assert result["status"].startswith("finished without a single measurement")
    assert "older run" not in (tmp_path / "gpu.md").read_text()


def test_stopping_gpu_all_stops_its_child(tmp_path):
    """SIGTERM to the parent alone: the child measuring on the GPU must not live on."""
    assert_sigterm_stops_the_child(
        ["benchmarks.gpu_all", "--dry-run", "--backends", "tensorflow", "--max-variants", "1",
         "--repeats", "1", "--out", str(tmp_path)],
        marker="-m benchmarks --gpu", says=None)


def test_bench_grid_versions_times_each_run_and_its_command_cpu(tmp_path, monkeypatch):
    # table1 stands in: each "run" writes its cells' done.json and burns a known
    # amount of CPU in a child process, more on v3 than on v2.
    import sys
    import subprocess

    from benchmarks import bench_grid_versions as bench

    burn = {2: 0.2, 3: 0.6}  # CPU seconds each version's child spends

    def table1(version, cells, results, profile="quick"):
        cell = Path(results) / "phantom-v-quick" / "a0.3_b0.7" / "fold0"
        cell.mkdir(parents=True)
        (cell / "done.json").write_text(json.dumps({"seconds": 10.0 * version}))
        subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                        f"while time.process_time() - t < {burn[version]}: pass"], check=True)

    monkeypatch.setattr(bench, "table1", table1)
    out = tmp_path / "timing.json"
    assert bench.main(["--cells", "a0.3_b0.7/fold0", "--rounds", "2", "--json", str(out)]) == 0
    timing = json.loads(out.read_text())
    assert [run["version"] for run in timing["runs"]] == [2, 3, 3, 2]
    assert [run["total"] for run in timing["runs"]] == [20.0, 30.0, 30.0, 20.0]
    assert timing["ratio_v3_over_v2"] == pytest.approx(1.5)
    for run in timing["runs"]:  # the child's CPU plus Python's start-up, never less
        assert burn[run["version"]] <= run["cpu_seconds"] < burn[run["version"]] + 1.5
    assert timing["cpu_ratio_v3_over_v2"] > 1.0
