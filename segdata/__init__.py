"""SegFlow data: files -> validated TFRecord shards -> tf.data pipeline.

Modules (import the one you need; nothing here has import side effects):
  sources   find frame/mask pairs in each layout
  validate  check and convert one pair (Pillow only; runs in worker processes)
  prepare   split, validate, write shards + manifest atomically
  records   the TFRecord schema and manifest: encode, parse, list shards
  augment   joint image/mask augmentation with one seed per example
  spec      InputSpec: the model's input, decided once per run (its saved form: the contract)
  pipeline  training_dataset(), evaluation_dataset(): the tf.data input pipeline
  atomic    files that appear whole or not at all
  serving   raw images <-> model input and output as training mapped them (inference)
  synthetic a deterministic built-in dataset
"""
