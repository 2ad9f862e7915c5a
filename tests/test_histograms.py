"""reproduce.histograms: whole-brain histogram statistics and the phantom's coverage of real scans."""

import json
import math

import nibabel as nib
import numpy as np
import pytest

from reproduce import histograms, report


def test_brain_statistics_hand_worked():
    # Brain values 1..10 (median 5.5): below half the median (2.75) are 1 and 2.
    image = np.zeros((4, 4, 1))
    image.flat[:10] = np.arange(1, 11)
    brain = image > 0
    found = histograms.brain_statistics(image, brain)
    assert found["below_half_median"] == pytest.approx(0.2)
    assert found["p99"] == pytest.approx(np.percentile(np.arange(1, 11), 99) / 5.5)
    assert found["p0.5"] == pytest.approx(np.percentile(np.arange(1, 11), 0.5) / 5.5)
    with pytest.raises(ValueError, match="empty"):
        histograms.brain_statistics(image, np.zeros_like(brain))
    with pytest.raises(ValueError, match="not positive"):
        histograms.brain_statistics(-image, brain)


def test_a_dark_rim_counts_in_the_brain_fraction_but_never_in_the_cores():
    """A looser skull strip's dark rim is not dark CSF: only a deep ventricle counts in
    the core's fraction, which reads the whole brain's median."""
    axis = np.arange(-16, 17, dtype=float)
    radius = np.sqrt(sum(np.square(a) for a in np.meshgrid(axis, axis, axis, indexing="ij")))
    brain = radius < 14
    rim = brain & (radius >= 12)
    ventricle = radius < 3
    image = np.where(rim, 10.0, np.where(ventricle, 5.0, 100.0)) * brain
    from tversky_keras.data.normalize import brain_core

    core = brain_core(brain, 1.0, 6.0)
    assert not (core & rim).any() and (ventricle <= core).all()
    found = histograms.brain_statistics(image, brain, core)
    assert found["below_half_median"] == pytest.approx((rim | ventricle).sum() / brain.sum())
    assert found["core_below_half_median"] == pytest.approx(ventricle.sum() / core.sum())
    phantom = {"s": {"FLAIR": {**found, "core_below_half_median": 0.0}}}
    real = {"patient": {"FLAIR": found}}
    # The brain fraction alone is in range; the core's is not: not covered.
    assert histograms.coverage(real, histograms.phantom_ranges(phantom)) == {
        "patient": {"FLAIR": False}}


def test_the_statistics_do_not_change_with_the_scanners_units():
    rng = np.random.default_rng(0)
    image = rng.gamma(3.0, 10.0, (8, 8, 8))
    brain = rng.random(image.shape) > 0.2
    a = histograms.brain_statistics(image, brain)
    b = histograms.brain_statistics(37.5 * image, brain)
    assert a == pytest.approx(b)


def test_coverage_is_the_range_of_the_phantoms_subjects():
    per_subject = {"s1": {"FLAIR": {s: 0.02 for s in histograms.STATISTICS}},
                   "s2": {"FLAIR": {s: 0.10 for s in histograms.STATISTICS}}}
    ranges = histograms.phantom_ranges(per_subject)
    assert ranges["FLAIR"]["below_half_median"] == [0.02, 0.10]
    real = {"inside": {"FLAIR": {"below_half_median": 0.085}},
            "outside": {"FLAIR": {"below_half_median": 0.12}}}
    assert histograms.coverage(real, ranges) == {"inside": {"FLAIR": True},
                                                 "outside": {"FLAIR": False}}


def write_subject(folder, flair_dark_fraction, rng):
    folder.mkdir(parents=True)
    shape = (10, 10, 10)
    for modality in ("T1W", "T2W", "FLAIR"):
        image = rng.uniform(90, 110, shape).astype(np.float32)
        if modality == "FLAIR":
            image.flat[: int(flair_dark_fraction * image.size)] = 5.0
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"{modality}.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)),
             folder / "consensus_gt.nii.gz")


def test_the_command_writes_strict_json_and_names_what_is_not_covered(tmp_path, capsys):
    rng = np.random.default_rng(1)
    write_subject(tmp_path / "real" / "p1", 0.08, rng)
    write_subject(tmp_path / "phantom" / "a", 0.0, rng)
    write_subject(tmp_path / "phantom" / "b", 0.05, rng)
    assert histograms.main(["--data", str(tmp_path / "real"), "--phantom",
                            str(tmp_path / "phantom"), "--out",
                            str(tmp_path / "out" / "h.json")]) == 0

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    record = json.loads((tmp_path / "out" / "h.json").read_text(), parse_constant=refuse)
    assert record["real"]["p1"]["FLAIR"]["below_half_median"] == pytest.approx(0.08)
    phantom = record["phantoms"]["phantom"]
    assert phantom["ranges"]["FLAIR"]["below_half_median"] == pytest.approx([0.0, 0.05])
    assert phantom["covered"]["p1"] == {"T1W": True, "T2W": True, "FLAIR": False}
    text = (tmp_path / "out" / "h.md").read_text()
    assert "does not cover p1 FLAIR" in text and text.strip() == report.histograms_markdown(record)
    assert not math.isnan(phantom["ranges"]["T1W"]["p99"][0])
    assert text.strip() in capsys.readouterr().out
