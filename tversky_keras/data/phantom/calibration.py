"""The phantom's calibration constants, each with where it comes from.

Sources are of three kinds, named in the comment above each constant:

- **literature**: a paper, by author and year, and what it reports; where the
  paper gives the idea (lesion sites, domain randomisation) but not the
  numbers, the numbers are marked a design choice;
- **measured**: on the MSLUB data (Lesjak et al., Neuroinformatics 2017) as
  this project holds it: the 30 patients' lesion statistics in
  ``shared/data/mslub-mni/lesion_stats.json``, or patients 07 and 26's scans
  (the version-2 calibration, from their intensities only, never their lesion
  masks; ``reproduce.realism`` measures the fit);
- **a design choice**: set by hand, with the reason the code gives (some are
  thresholds that find features of the MNI152 template).

Intensities are relative to white matter = 100. Numbers used once inside a
function (such as the 1.5 % scanner-to-scanner spread of tissue intensities)
stay there, explained where they are used.
"""

import numpy as np

# === anatomy =====================================================================

# Measured on patients 07 and 26: linear size of a subject's brain relative to
# MNI152's. The real scans are registered to MNI space without scaling: MSLUB
# patients 07 and 26 span 0.88 of the template's extent (brain masks 1.12-1.14 L
# against its 1.89 L).
_BRAIN_SCALE = (0.80, 0.90)
# A design choice: a rigid registration to MNI space leaves a brain turned and
# shifted by a few degrees and millimetres (standard deviations per axis).
_MISREGISTRATION_DEGREES = 4.0
_MISREGISTRATION_MM = 3.0
# A design choice: smooth random displacements (length mm, standard deviation
# mm per axis): brains differ from the template at the scale of lobes and of gyri.
_DEFORMATIONS = ((40.0, 2.5), (15.0, 1.5))
# A design choice: sharp tissue boundaries: parenchyma where GM + WM exceeds
# about this (varying over 30 mm; the probability's midpoint), white matter
# where WM / (GM + WM) exceeds _WHITE_THRESHOLD (the template's thick, averaged
# cortex would otherwise hold too much grey matter).
_PARENCHYMA_THRESHOLD = 0.5
_WHITE_THRESHOLD = 0.2
# A design choice: skull stripping keeps little CSF outside the brain: the
# stripped brain is grey and white matter over this (_stripped_brain_1mm).
_OUTER_CSF_THRESHOLD = 0.45
# A design choice: sulci, collapsed in the template (see _sulcus_distance_1mm),
# are re-opened as CSF sheets of this half-width (mm, drawn per subject),
# varying over 25 mm.
_SULCUS_HALF_WIDTH_MM = (0.25, 0.55)
# A design choice for the MNI152 template: its collapsed sulci are taken to lie
# where the nearest white matter jumps by over this between neighbouring voxels
# (from one bank to the other),
_SULCUS_JUMP_MM = 5.0
# and can be reached from outside the brain through grey matter and CSF within
# this many 1-mm steps, which leaves out the deep grey nuclei.
_SULCUS_REACH_MM = 35
# A design choice: sulcal vessels are curves about this far apart,
_VESSEL_SPACING_MM = 15.0
# and this thick (radius).
_VESSEL_RADIUS_MM = 0.6
# A design choice: atrophy: the ventricles' walls move out by a subject's draw
# in this range.
_VENTRICLE_WIDENING_MM = (0.0, 1.0)
# The -atrophy appearances': MS patients' ventricles are larger than the young template's
# (brain atrophy). Chosen so that the share of the brain's core (deeper than 6 mm) below
# half the brain's median spans the development patients' (reproduce.histograms: FLAIR
# 0.030 and 0.036, T1W 0.064 and 0.073). Measured on four subjects of each look at 2 mm:
# synthseg, walls out by 0.5 mm: FLAIR 0.002-0.018; by 5 mm: 0.034-0.048 (T1W 0.006-0.022
# either way: its CSF is often drawn bright); randomized-csf, by 6 mm: FLAIR 0.059-0.073,
# T1W 0.050-0.059; by 8 mm: FLAIR 0.068-0.108, T1W 0.071-0.092.
_ATROPHY_WIDENING_MM = (0.0, 8.0)
# The randomized-csf look's FLAIR CSF, ventricular then other, relative to white matter:
# suppressed nearly to zero in the ventricles as in real FLAIR (the development patients'
# brain 0.5th percentile is 0.00 of the median), less in sulci, where partial volume
# with grey matter and flow keep some signal.
_DARK_FLAIR_CSF = ((0.0, 0.2), (0.05, 0.5))
# A design choice for the MNI152 template: its deep grey nuclei (basal ganglia,
# thalamus) are taken to be the grey matter over this deep in the template,
_DEEP_GREY_DEPTH_MM = 20.0
# and within this of its lateral ventricles.
_DEEP_GREY_VENTRICLE_MM = 25.0

# === the grid =====================================================================

# A design choice: room for deformation and scale around the template brain.
_GRID_MARGIN_MM = 8.0
# A design choice: grid sizes divisible by 8 suit a U-Net with three poolings.
_GRID_MULTIPLE = 8
# A design choice: ventricles and depth are found once, on a 2 mm grid.
_COARSE_GRID_MM = 2.0

# === lesions, version 2 (drawn ovoids) ===========================================

# Measured: lesion load (mm^3) of the 30 MSLUB patients in MNI space, quantile ->
# value (lesion_stats.json's lesion_voxels_quantiles; 1 voxel = 1 mm^3).
_LOAD_QUANTILES = ((0.0, 316.0), (0.25, 1802.0), (0.5, 13934.5), (0.75, 28181.75), (1.0, 52190.0))
# Measured: component volumes of those patients (lesion_stats.json's
# component_volume_mm3_quantiles): median 17 mm^3, quartiles 6 and 46 mm^3
# (log-normal sigma = ln(46/6) / 1.349); the heavier tail (95% 261, 99% 2254
# mm^3) comes from medium lesions and one confluent lesion per subject.
_LESION_MEDIAN_MM3 = 17.0
_LESION_LOG_SIGMA = 1.5
# Literature for the sites, design choice for the shares: where the lesions
# other than the confluent one go, as shares of their number: deep white
# matter, drawn towards the ventricles (_PERIVENTRICULAR_*); white matter at
# the cortex (juxtacortical); white matter below the tentorium (cerebellum,
# brainstem). The sites are those of the MAGNIMS criteria (Filippi et al.,
# Lancet Neurol 2016); the shares are set by hand, most lesions
# periventricular, not fitted to any mask.
_LESION_SITES = {"deep": 0.72, "juxtacortical": 0.18, "infratentorial": 0.10}
# A design choice: deep lesions are drawn with a density 1 + weight * exp(-d /
# length) at distance d from the ventricles, 31 times denser at the wall than
# far from it, so that most are periventricular (_LESION_SITES' "deep").
_PERIVENTRICULAR_MM = 5.0
_PERIVENTRICULAR_WEIGHT = 30.0
# A design choice: the template's white matter that borders cortex is taken to
# be white matter this close to the brain's surface, and
_JUXTACORTICAL_DEPTH_MM = 20.0
# this far from the ventricles (so that deep periventricular white matter is not).
_JUXTACORTICAL_VENTRICLE_MM = 15.0
# A design choice: one horizontal plane in MNI space stands in for the
# tentorium: lesions below this MNI z are infratentorial.
_TENTORIUM_Z_MM = -20.0

# === lesions, version 3 (real MSLUB masks) =========================================

# Measured (version-3 calibration): the masks' patients were registered to MNI
# space rigidly, without scaling, as patients 07 and 26: their brains are of
# the size the phantom's subjects are drawn to (_BRAIN_SCALE). A mask scaled up
# by 1 / mean(_BRAIN_SCALE) about the template brain's centre is at the
# template's size, where 90-100 % (median 99 %) of its lesion voxels fall on the
# template's parenchyma (79-99 %, median 95 %, unscaled); each subject's own
# shrinkage brings it back.
_LESION_MASK_BRAIN_SCALE = float(np.mean(_BRAIN_SCALE))

# === calibrated appearance: lesion contrast ==========================================

# Measured: mean lesion z-score after zscore_in_brain, on three MSLUB patients
# (lesion_stats.json keeps two of them: patient07 FLAIR 1.52, T2W 0.69, T1W
# 0.06; patient26 1.42, 0.92, 0.02); each subject draws its targets inside
# these ranges.
_LESION_Z = {"T1W": (-0.10, 0.10), "T2W": (0.65, 0.90), "FLAIR": (1.30, 1.50)}

# === calibrated appearance: tissues, white matter = 100 =================================

# Measured on patients 07 and 26 (version-2 calibration): per modality, CSF in
# the ventricles, other CSF (sulci, cisterns: FLAIR suppresses it less),
# cortical GM, deep GM, WM. The start was a 5-class Gaussian mixture of (T1W,
# T2W, FLAIR) inside MSLUB patients 07 and 26's brains at 1 mm, intensities
# only: WM, GM (76 / 127 / 116), CSF (12 / 290 / 50), CSF-GM partial volume and
# brain-edge clusters. The values were then set by hand so that the phantom's
# brain z-scores at 2 mm match the patients': whole-brain quantiles, T2W and
# FLAIR medians per T1W z-score bin, and the region medians of
# reproduce.realism. They are effective values, not raw ratios: the real scans
# are z-scored at 1 mm, where dark edge voxels widen the scale, and resampled
# after, so their CSF sits less far out in z than its raw intensity suggests.
_TISSUE_INTENSITY = {"T1W": (20.0, 25.0, 82.0, 87.0, 100.0),
                     "T2W": (260.0, 230.0, 114.0, 106.0, 100.0),
                     "FLAIR": (55.0, 80.0, 110.0, 104.0, 100.0)}
# A design choice: CSF this close to the ventricles takes the ventricular
# intensity (fading to the other CSF's with this length).
_VENTRICULAR_CSF_MM = 3.0
# A design choice: flowing blood in the sulcal vessels is dark in every
# modality (flow voids); not measured (too few voxels at 2 mm), a plausible look.
_VESSEL_INTENSITY = {"T1W": 35.0, "T2W": 30.0, "FLAIR": 30.0}
# A design choice (version-2 calibration, "a faint bright ventricular
# lining"): the tissue lining the lateral ventricles is brighter in FLAIR and
# T2W in normal brains too (ependymal "caps and bands"): relative change at
# the wall, fading over _RIM_MM, patchy, stronger in some subjects.
_RIM = {"T1W": 0.0, "T2W": 0.05, "FLAIR": 0.08}
_RIM_MM = 1.5
# Measured on patients 07 and 26, then lowered by design: the deep white matter
# of MS patients is diffusely changed ("dirty-appearing"): in patients 07 and
# 26 the template's deep white matter is about 6 % brighter in T2W and 2.5 % in
# FLAIR than the white-matter cluster. Set lower here (4 %, 1 %, and -2 % in
# T1W), as more makes the phantom's slow white-matter drift exceed theirs.
_DEEP_WHITE = {"T1W": -0.02, "T2W": 0.04, "FLAIR": 0.01}
# A design choice: the deep white matter's change fades over this from the ventricles.
_DEEP_WHITE_MM = 15.0

# === calibrated appearance: noise, texture, bias, blur ==================================

# Measured on patients 07 and 26 (version-2 calibration): Rician sigma / WM
# intensity, set with _TEXTURE so that the high-pass residual of white matter
# (reproduce.realism's "fine texture") matches the patients' 0.15-0.17 /
# 0.13-0.16 / 0.19-0.21 brain SDs.
_NOISE = {"T1W": 0.013, "T2W": 0.02, "FLAIR": 0.009}
# Measured with _NOISE (the same fine texture): tissue texture, relative
# amplitude (0.07 in version 1, lowered in the version-2 calibration).
_TEXTURE = 0.02
# A design choice (unchanged since version 1): the texture's Gaussian width.
_TEXTURE_MM = 2.5
# Measured on patients 07 and 26 (version-2 calibration): residual bias field
# per modality, SD of its log (the real scans are N4-corrected): 20-mm
# white-matter drift of the patients is 0.03-0.09 brain SDs, most of which the
# phantom's anatomy and lesions already give.
_BIAS = {"T1W": 0.01, "T2W": 0.005, "FLAIR": 0.005}
# A design choice: the bias field varies over this length (brain-scale, smooth).
_BIAS_MM = 60.0
# A design choice (0.5 in version 1, 0.65 since the version-2 calibration):
# partial-volume blur, Gaussian sigma in voxels.
_BLUR_VOXELS = 0.65

# === randomized appearance (domain randomisation) ===================================

# Literature for the idea, design choice for the ranges: domain randomisation
# as SynthSeg (Billot et al., Med. Image Anal. 2023): instead of one calibrated
# look, every subject is imaged with its own draw of what varies between
# scanners and protocols, so that a network trained on the phantom cannot lean
# on any one look. The ranges are set from what is known to vary, not fitted
# to any real patient.
# Tissue contrast: each tissue's log-intensity ratio to white matter
# (_TISSUE_INTENSITY) is scaled by a factor in this range, per modality and
# tissue: grey-white contrast differs between field strengths and between
# sequences of one name (MPRAGE vs SPGR T1W, 2D vs 3D FLAIR, TE/TR/TI), and
# FLAIR's CSF suppression is incomplete to a varying degree.
_CONTRAST_SCALE = (0.5, 1.5)
# Lesion contrast against white matter, per modality: MS lesions are
# hyperintense in T2W and FLAIR and iso- to hypointense in T1W ("black holes"
# in some).
_LESION_RATIO = {"T1W": (0.55, 1.05), "T2W": (1.15, 2.2), "FLAIR": (1.15, 2.0)}
# SD of the log bias field: none after N4 correction, 10-30 % across the brain
# uncorrected at 3 T.
_BIAS_RANGE = (0.0, 0.15)
# Resolution: a 3D acquisition's voxel, about 1 mm,
_THIN_SLICE_MM = (0.8, 1.5)
# or a 2D acquisition's slice thickness along a random axis, as clinical FLAIR
# and T2W often are.
_SLICE_MM = (3.0, 6.0)
# Rician noise sigma / WM intensity: SNR 25-200.
_NOISE_RANGE = (0.005, 0.04)

# === SynthSeg-grade appearance ("synthseg"; issue 31) ==================================

# Literature for the idea, physics for the ranges, no real scan fitted: as SynthSeg
# (Billot et al., Med. Image Anal. 2023), each tissue class's intensity is drawn on
# its own, not scaled from the calibration, so that no ratio the calibration fixed
# (FLAIR's CSF at 0.55-0.8 of white matter) survives in every subject. The ranges
# are relative to white matter and follow what each sequence can show: FLAIR
# suppresses free water, so CSF runs from fully nulled (0) to poorly suppressed;
# T2W CSF is the brightest tissue; T1W CSF is the darkest; grey matter sits on
# either side of white matter within what field strength and sequence give.
# Classes: ventricular CSF, other CSF (sulci, cisterns), cortical GM, deep GM.
_SYNTH_TISSUE = {"T1W": ((0.05, 0.6), (0.05, 0.7), (0.5, 0.95), (0.55, 1.0)),
                 "T2W": ((1.5, 4.0), (1.3, 4.0), (1.0, 1.7), (0.85, 1.5)),
                 "FLAIR": ((0.0, 0.45), (0.0, 0.8), (0.85, 1.5), (0.8, 1.4))}
# The share of a brain-edge voxel that skull stripping cut off, relative to the
# brain's mean: real brain masks are soft after registration, and what they keep
# of the edge runs from dark (CSF, the cut) to tissue-bright.
_SYNTH_EDGE_LEVEL = (0.0, 1.0)
# Lesion contrast against white matter, from barely visible to very bright in
# FLAIR and T2W (ratio up to about 4 in acute or confluent lesions), and from
# iso- to markedly hypointense in T1W (black holes).
_SYNTH_LESION_RATIO = {"T1W": (0.3, 1.05), "T2W": (1.05, 4.0), "FLAIR": (1.05, 4.0)}
# A looser skull strip, as another centre's pipeline gives: with this
# probability a rim of non-brain tissue (meninges, fat, marrow, muscle) stays
# around the brain, this thick, at an intensity relative to white matter drawn
# per modality from this range, with its own coarse texture.
_SKULL_RIM_PROBABILITY = 0.5
_SKULL_RIM_MM = (1.0, 6.0)
_SKULL_RIM_INTENSITY = (0.1, 2.5)
_SKULL_RIM_TEXTURE = 0.3
