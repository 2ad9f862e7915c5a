"""A synthetic MS-lesion phantom: the default data set when no real scans are at hand.

Each subject is the MNI152 ICBM 2009a template (shipped inside nilearn's wheel:
grey- and white-matter probability maps and the brain mask), shrunk to a real
brain's size and put under a smooth random deformation. The template's blurred
tissue maps are made into sharp boundaries, its collapsed sulci are re-opened
as thin CSF sheets with vessels in them, the ventricles widen with atrophy, and
skull stripping leaves partial voxels at the brain's edge. The subject is imaged
as T1W, T2W and FLAIR by summing tissue intensities over the partial volumes
(with deep grey nuclei, a bright lining of the ventricles and diffusely changed
deep white matter), then blurred, bias-modulated and given Rician noise.
Version 3 (the default): each subject carries one real MS patient's lesions,
a consensus mask of the MSLUB database (Lesjak et al., Neuroinformatics 2017)
in MNI space, embedded in the package (``tversky_keras.data.lesion_atlas``;
``lesion_sources`` deals them to subjects), moved by the subject's own
shrinkage and deformation and kept to its parenchyma. Version 2
(``version=2``, reproduced exactly) draws the lesions as ovoids instead: one
confluent lesion beside a lateral ventricle and many smaller ones, most in
deep white matter near the ventricles, some juxtacortical and some
infratentorial, with a load, count and sizes drawn to match the 30 MSLUB
patients.

The calibrated appearance (the default) sets the lesions' contrast subject by
subject so that, after ``zscore_in_brain``, lesions sit where real lesions
do: about 1.3-1.5 brain standard deviations above the brain mean in FLAIR,
0.6-0.9 in T2W and near 0 in T1W -- not trivially bright; the tissues' look
is calibrated to two real MSLUB patients with intensity statistics only
(never their lesion masks); ``reproduce.realism`` measures it. The
randomized appearance (domain randomisation, as SynthSeg) draws each
subject's own contrasts, lesion contrast, bias field, resolution and noise.

Files follow the real data's layout, ``<out>/<id>/{T1W,T2W,FLAIR,consensus_gt}.nii.gz``,
so the same loaders read both.

Which file does what (imports run one way, down this list; names with a
leading underscore are private to the subpackage):

- ``dataset.py``: ``synthesize_dataset`` writes a data set and its
  ``phantom.json`` manifest to disk;
- ``generate.py``: ``synthesize_subject`` makes one subject from a seed (the
  order of the random draws lives here), ``dataset_subjects`` a data set's
  subjects in memory; the versions and appearances;
- ``imaging.py``: T1W, T2W and FLAIR of a subject, calibrated or randomized;
- ``anatomy.py``: the subject's brain, the template shrunk and deformed;
- ``lesions.py``: version 2's drawn ovoids and version 3's real masks;
- ``fields.py``: the smooth random fields all of the above draw on;
- ``template.py``: the MNI152 template on the phantom's grids, ``mni152_tissue``;
- ``calibration.py``: every calibration constant, each with its source.
"""

from tversky_keras.data.phantom.dataset import synthesize_dataset
from tversky_keras.data.phantom.generate import (APPEARANCES, MIXED_LOOKS, PHANTOM_VERSION,
                                                 PHANTOM_VERSIONS, SPACING_RANGE_MM,
                                                 SyntheticSubject, dataset_subjects,
                                                 subject_appearance, subject_seed,
                                                 synthesize_subject)
from tversky_keras.data.phantom.lesions import LesionSource, lesion_loads, lesion_sources
from tversky_keras.data.phantom.template import mni152_tissue

__all__ = [
    "synthesize_dataset",
    "synthesize_subject",
    "dataset_subjects",
    "SyntheticSubject",
    "subject_seed",
    "subject_appearance",
    "lesion_sources",
    "LesionSource",
    "lesion_loads",
    "mni152_tissue",
    "PHANTOM_VERSION",
    "PHANTOM_VERSIONS",
    "APPEARANCES",
    "MIXED_LOOKS",
    "SPACING_RANGE_MM",
]
