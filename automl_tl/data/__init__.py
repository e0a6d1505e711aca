"""data: what the images are. Finding files and reading folder layouts or CSVs (files, layout,
scan), opening every file once (audit), the train / validation / test split, the Dataset of
a fit, decoding and preprocessing shared with inference (decode, preprocess), float batches
for a model (batches), and the fine-tuning side: decoded-once image datasets, augmentation,
the input size of fine-tuning, the demo digits.

May import: core. preprocess, files and scan are torch-free (the Predictor uses them).
"""
