"""Data only: 27 MSLUB consensus lesion masks in MNI space (CC-BY; see README.md here).

Read them with ``tversky_keras.data.lesion_atlas``.
"""
