"""One synthetic subject from a seed, and the subjects of a data set.

``synthesize_subject`` checks its options, then draws, in this order from one
random stream: a lesion load, the lesion source (version 3, unless given),
the anatomy, the lesions, a tissue texture, and each modality's image. A draw
moved or inserted changes every subject after it: versions stay reproducible
only while that order does.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tversky_keras.data.io import MODALITIES
from tversky_keras.data.phantom.anatomy import _deformed_anatomy
from tversky_keras.data.phantom.calibration import (_ATROPHY_WIDENING_MM, _LESION_Z, _TEXTURE_MM,
                                                    _VENTRICLE_WIDENING_MM)
from tversky_keras.data.phantom.imaging import (_calibrated_image, _randomized_image,
                                                _skull_rim, _synthseg_image, _with_skull_rim)
from tversky_keras.data.phantom.lesions import (LesionSource, _lesions, _load_quantile,
                                                _real_lesions, lesion_loads, lesion_sources)
from tversky_keras.data.phantom.template import _template

PHANTOM_VERSION = 3
"""The generator's current version, the default of every ``version`` argument."""
PHANTOM_VERSIONS = (2, 3)
"""The versions it still makes, each reproduced exactly."""
_ATROPHY_LOOKS = ("randomized-rim", "randomized-csf", "synthseg", "mixed")
APPEARANCES = ("calibrated", "randomized", "randomized-rim", "randomized-csf", "synthseg",
               "mixed") + tuple(f"{look}-atrophy" for look in _ATROPHY_LOOKS)
"""The ``appearance`` options: calibrated to real scans, domain randomisation around the
calibration, the same with half the subjects given a looser skull strip's rim,
SynthSeg-grade randomisation (tissue intensities drawn on their own, dark CSF in FLAIR,
lesions up to very bright, looser skull strips), a data set whose subjects alternate
randomized-rim and synthseg (``MIXED_LOOKS``), randomized-rim with FLAIR's CSF
suppressed as in real scans (``randomized-csf``), and those with ``-atrophy``: the same looks on
brains whose ventricles are widened as far as MS patients' (``_ATROPHY_WIDENING_MM``
instead of ``_VENTRICLE_WIDENING_MM``)."""
MIXED_LOOKS = ("randomized-rim", "synthseg")
"""The ``mixed`` data set's subjects, in turn: subject ``i`` is ``MIXED_LOOKS[i % 2]``'s
subject ``i``, byte for byte (``mixed-atrophy``'s: their ``-atrophy`` looks')."""
ATROPHY = "-atrophy"
SPACING_RANGE_MM = (0.5, 8.0)
"""The voxel sizes (mm) the generator makes, a design choice (the template is 1 mm)."""


@dataclass(frozen=True)
class SyntheticSubject:
    """One synthetic subject.

    Attributes:
        images: modality name (``T1W``, ``T2W``, ``FLAIR``) -> float32 array,
            zero outside the brain.
        lesion: uint8 lesion mask of the same shape.
        affine: 4x4 voxel-to-MNI-millimetre affine.
        tissue: ``CSF``, ``GM``, ``WM`` -> float32 share of each voxel (CSF
            includes the sulcal vessels); they add up to the voxel's share
            inside the brain, zero outside it.
        ventricle_distance_mm: float32 distance (mm) to the lateral ventricles.
        lesion_load_target_mm3: the load the lesions were drawn to (version 3:
            the real patients' load in MNI space, before the brain's shrinkage).
        lesion_source: version 3: whose lesions (``LesionSource.label``).
    """

    images: dict
    lesion: np.ndarray
    affine: np.ndarray
    tissue: dict
    ventricle_distance_mm: np.ndarray
    lesion_load_target_mm3: float
    lesion_source: str | None = None


def subject_seed(seed, index):
    """The seed of subject ``index`` of the data set made with ``seed``."""
    return np.random.SeedSequence(seed, spawn_key=(index,))


def check_generator(version, appearance):
    """A ValueError unless ``version`` and ``appearance`` name a generator this module has."""
    if version not in PHANTOM_VERSIONS:
        raise ValueError(f"version must be one of {PHANTOM_VERSIONS}, got {version!r}")
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {', '.join(APPEARANCES)}, got "
                         f"{appearance!r}")


def subject_appearance(appearance, index):
    """The look of subject ``index`` of a data set of ``appearance``: the appearance
    itself, except for ``mixed``, whose subjects alternate ``MIXED_LOOKS``."""
    if appearance.removesuffix(ATROPHY) != "mixed":
        return appearance
    return MIXED_LOOKS[index % len(MIXED_LOOKS)] + appearance[len("mixed"):]


def synthesize_subject(seed, spacing=2.0, lesion_load_mm3=None, version=PHANTOM_VERSION,
                       lesion_source=None, appearance="calibrated"):
    """One synthetic MS subject: T1W, T2W, FLAIR and the lesion mask.

    Args:
        seed: int or ``numpy.random.SeedSequence``; the same seed gives the
            same subject.
        spacing: isotropic voxel size in mm (the template is 1 mm).
        lesion_load_mm3: version 2: total lesion volume to draw; ``None`` draws
            one from the real patients' distribution. Version 3 takes its load
            from the real lesions.
        version: 3 (default): real patients' lesions (``lesion_source``); 2:
            the earlier phantom's drawn ovoids, reproduced exactly.
        lesion_source: version 3: a ``LesionSource``; ``None`` draws one
            embedded mask at random.
        appearance: ``"calibrated"`` (tissue and lesion contrasts matched to
            real MSLUB scans) or ``"randomized"`` (domain randomisation: the
            subject's own draw of contrasts, bias, resolution and noise) or
            ``"randomized-rim"`` (the randomized subject, the same voxels inside the
            brain, and half the subjects with a looser skull strip's rim) or
            ``"synthseg"`` (each tissue's intensity drawn on its own, FLAIR's CSF
            down to nulled, lesions up to four times white matter, and half the
            subjects with a looser skull strip's rim of non-brain tissue). A data set's
            ``mixed`` appearance is not a subject's: ``subject_appearance`` names each
            subject's look.

    Returns:
        ``SyntheticSubject``.
    """
    from tversky_keras.data.lesion_atlas import lesion_mask_names, lesion_mask_loads

    low, high = SPACING_RANGE_MM
    if not low <= spacing <= high:
        raise ValueError(f"spacing must be between {low:g} and {high:g} mm, got {spacing}")
    check_generator(version, appearance)
    if appearance.removesuffix(ATROPHY) == "mixed":
        raise ValueError(f"appearance {appearance!r} is a data set's: its subjects alternate "
                         f"{' and '.join(MIXED_LOOKS)}; give one of those for a subject")
    atrophy = appearance.endswith(ATROPHY)
    appearance = appearance.removesuffix(ATROPHY)
    if lesion_load_mm3 is not None and lesion_load_mm3 <= 0:
        raise ValueError(f"lesion_load_mm3 must be positive, got {lesion_load_mm3}")
    if version == 3 and lesion_load_mm3 is not None:
        raise ValueError("version 3 takes its lesion load from real lesions: give "
                         "lesion_source, not lesion_load_mm3")
    if version == 2 and lesion_source is not None:
        raise ValueError("lesion_source is for version 3; version 2 draws its lesions")
    rng = np.random.default_rng(seed)
    load = float(_load_quantile(rng.uniform()) if lesion_load_mm3 is None else lesion_load_mm3)
    template = _template(float(spacing))
    if version == 3:
        if lesion_source is None:
            lesion_source = LesionSource((str(rng.choice(lesion_mask_names())),), (False,))
        load = float(sum(lesion_mask_loads()[name] for name in lesion_source.names))
    anatomy = _deformed_anatomy(rng, template, spacing, lesion_source,
                                _ATROPHY_WIDENING_MM if atrophy else _VENTRICLE_WIDENING_MM)
    lesion = _lesions(rng, load, anatomy, spacing) if version == 2 else _real_lesions(
        rng, anatomy, spacing)
    texture = ndimage.gaussian_filter(rng.standard_normal(anatomy.brain.shape, dtype=np.float32),
                                      _TEXTURE_MM / spacing)
    texture /= texture.std()
    if appearance == "calibrated":
        images = {m: _calibrated_image(rng, m, rng.uniform(*_LESION_Z[m]), anatomy, lesion,
                                       spacing, texture)
                  for m in MODALITIES}
    elif appearance.startswith("randomized"):
        images = {m: _randomized_image(rng, m, anatomy, lesion, spacing, texture,
                                       dark_csf=appearance == "randomized-csf")
                  for m in MODALITIES}
    else:
        images = {m: _synthseg_image(rng, m, anatomy, lesion, spacing, texture)
                  for m in MODALITIES}
    # Drawn last: inside the brain, the voxels are those of the look without a rim.
    if appearance in ("synthseg", "randomized-rim", "randomized-csf"):
        rim = _skull_rim(rng, anatomy.brain, spacing)
        if rim is not None:
            images = _with_skull_rim(rng, images, rim, spacing)
    return SyntheticSubject(images=images, lesion=lesion[1].astype(np.uint8),
                            affine=template.affine, tissue=anatomy.tissue,
                            ventricle_distance_mm=anatomy.ventricle_distance_mm,
                            lesion_load_target_mm3=load,
                            lesion_source=None if version == 2 else lesion_source.label)


def dataset_subjects(n_subjects, seed=0, spacing=2.0, version=PHANTOM_VERSION,
                     appearance="calibrated"):
    """The subjects ``synthesize_dataset`` writes with these arguments, one at a time.

    Subject ``i`` is ``synthesize_subject(subject_seed(seed, i), spacing, ...)``
    with version 2's stratified load ``lesion_loads(n_subjects, seed)[i]`` or
    version 3's ``lesion_sources(n_subjects, seed)[i]``.

    Yields:
        ``SyntheticSubject``.
    """
    for index, draw in enumerate(dataset_draws(n_subjects, seed, version)):
        yield synthesize_subject(subject_seed(seed, index), spacing, version=version,
                                 appearance=subject_appearance(appearance, index), **draw)


def dataset_draws(n_subjects, seed=0, version=PHANTOM_VERSION):
    """Each subject's own draw of a data set: version 2's stratified load
    (``lesion_loads``) or version 3's lesion source (``lesion_sources``), as keyword
    arguments of ``synthesize_subject``. Subject ``i`` depends on
    ``subject_seed(seed, i)`` and its draw alone, so subjects can be made in any order,
    or at once."""
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be at least 1, got {n_subjects}")
    if version == 2:
        return [{"lesion_load_mm3": load} for load in lesion_loads(n_subjects, seed)]
    return [{"lesion_source": source} for source in lesion_sources(n_subjects, seed)]
