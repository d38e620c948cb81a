"""SegFlow training engine: strategy/precision choice, the one training loop, export.

Imports segmodels (losses, metrics) and segdata's serving mapping (exports); the loop
itself never reads data: datasets arrive as `tf.distribute` datasets built by train.py.
`startup` is the process set-up train.py and the tools share (quiet TensorFlow import,
console scripts).
"""
