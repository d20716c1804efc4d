"""Command-line tools that turn DICOM and NIfTI into the 5D HDF5 data contract.

``dicom_to_h5`` / ``nifti_to_h5`` convert, ``make_masks`` and ``crop_h5`` focus
the images, ``make_folds`` writes the fold CSV, ``validate_h5`` checks a file.
Run each as ``python preprocess/<tool>.py --help``.
"""
