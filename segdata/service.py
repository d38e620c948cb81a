"""Sending the expensive part of the input pipeline (decode + augment) to a tf.data service.

Sharding policy: DYNAMIC. The dispatcher hands out splits of the source (shard files)
to the service workers on demand, so within one pass over the (finite) training split
every example is processed by exactly one worker: an epoch sees each example once, and
a fast worker takes more splits than a slow one. (OFF would make every worker produce
the whole split: with 2 workers each example arrives twice per pass.) The client repeats
the finished pass, which starts a new pass on the service: new shuffle order, hence new
per-example augmentation seeds.

Fault behaviour (DYNAMIC is at-most-once): if a service worker dies mid-pass, the splits
it held are lost for that pass (those examples are skipped once) and the remaining
workers carry on; training does not stop. If the dispatcher dies, the client fails after
TF's retry period unless the dispatcher was started with --work_dir (fault-tolerant
mode, it restarts from its journal).
"""
import tensorflow as tf

POLICY = tf.data.experimental.service.ShardingPolicy.DYNAMIC


def distribute(dataset, address, job_name=None):
    """One pass of `dataset`, processed on the service at `address` (grpc://HOST:PORT)."""
    if not address.startswith("grpc://"):
        raise ValueError(f"--data_service={address!r}: expected grpc://HOST:PORT")
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=POLICY, service=address, job_name=job_name))
