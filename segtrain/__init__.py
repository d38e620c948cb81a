"""SegFlow training engine: strategy/precision choice, the one training loop, export.

Imports segmodels (losses, metrics) but never segdata: datasets arrive as
`tf.distribute` datasets built by train.py.
"""
