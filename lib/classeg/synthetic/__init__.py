"""Synthetic brain-MRI scans written in the exact on-disk layouts of the real datasets (see DATASETS.md).

The real datasets cannot be downloaded on the build machines, so tests and the demo run on synthetic scans
that are learnable rather than noise. Two anatomy models draw them (``anatomy=``):

- ``phantom`` (default, :mod:`.phantom`): a head section built from a few shapes, fast and dependency-free;
- ``mni`` (:mod:`.mni`): slices of the real MNI152 2009a T1 template that nilearn ships in its wheel (the
  ``synth`` extra), with per-patient affine jitter, bias field, Rician noise and 3-D lesions of 9-22 mm.

Package layout: :mod:`.anatomies` (the model protocol), :mod:`.phantom` and :mod:`.mni` (the models),
:mod:`.layouts` (one writer per layout, ``anatomy_model``), :mod:`.formats` (file formats), :mod:`.metadata`
(names, CSV, README, class names), :mod:`.checks` and :mod:`.pixels` (shared helpers).

Every writer takes keyword-only arguments, is deterministic for its ``seed`` (``numpy.random.default_rng``,
no global random state: the same seed gives byte-identical files), refuses a non-empty output folder, writes
no extra files into the tree (real datasets have none) and returns the ground truth as a dict::

    {"layout": "lgg", "anatomy": "phantom", "root": "/abs/output", "files": 98,  # all copies included
     "slices": [{"path": "kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1.tif",  # relative, "/"
                 "mask_path": ".../TCGA_CS_4941_19960909_1_mask.tif",  # or None (mask inside the file/none)
                 "patient_id": "TCGA_CS_4941", "slice_index": 1, "label": 0, "label_name": "no_tumor",
                 "has_tumor": False, "height": 256, "width": 256, "mask_area_px": 0, ...}, ...],
     "broken": [{"path": "corrupt.tif", "kind": "corrupt_tiff"}, ...],
     ...layout-specific keys (patients, classes, folds)}

``has_tumor`` is always ``mask_area_px > 0`` of the exact mask. Layout-specific slice keys: LGG
``flair_copied_into``; figshare ``file_number``, ``fold``, ``mask_key``; folders ``split``, ``contrast``,
``kind``, ``mode``, ``subject``; archive ``format``, ``contrast``, ``kind``, ``mask`` (the exact (H, W) bool
numpy array; the archive has no mask files) and, for DICOM, ``rescale_slope``/``rescale_intercept``. With
``anatomy="mni"`` every slice also has ``pixel_mm`` (in-plane pixel side in mm) and ``plane_z_mm`` (the
slice's height in the scanner frame).
"""
from classeg.synthetic.anatomies import SliceSpec
from classeg.synthetic.formats import BROKEN_KINDS
from classeg.synthetic.layouts import (
    ANATOMIES, ARCHIVE_FORMATS, FIGSHARE_LABELS, FIGSHARE_SMALL_NUMBERS, FOLDER_CLASSES_4, FOLDER_CLASSES_44C,
    FOLDER_CLASSES_BINARY, LAYOUTS, LGG_CHANNELS, anatomy_model, write_archive, write_dataset, write_figshare,
    write_folders, write_lgg,
)
from classeg.synthetic.metadata import LGG_CSV_COLUMNS, LGG_INSTITUTIONS, contrast_for_class, lesion_kind_for_class
from classeg.synthetic.phantom import (
    CONTRASTS, LESION_KINDS, MIN_IMAGE_SIZE, TUMOR_KINDS, Anatomy, Lesion, phantom_slice, random_anatomy,
    random_lesion,
)

__all__ = [
    "ANATOMIES", "ARCHIVE_FORMATS", "BROKEN_KINDS", "CONTRASTS", "FIGSHARE_LABELS", "FIGSHARE_SMALL_NUMBERS",
    "FOLDER_CLASSES_4", "FOLDER_CLASSES_44C", "FOLDER_CLASSES_BINARY", "LAYOUTS", "LESION_KINDS", "LGG_CHANNELS",
    "LGG_CSV_COLUMNS", "LGG_INSTITUTIONS", "MIN_IMAGE_SIZE", "TUMOR_KINDS", "Anatomy", "Lesion", "SliceSpec",
    "anatomy_model", "contrast_for_class", "lesion_kind_for_class", "phantom_slice", "random_anatomy",
    "random_lesion", "write_archive", "write_dataset", "write_figshare", "write_folders", "write_lgg",
]
