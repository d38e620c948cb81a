"""Sending the expensive part of the input pipeline (decode + augment) to a tf.data service.

Sharding policy: DYNAMIC. The dispatcher hands out splits of the source (shard files)
to the service workers on demand, so within one pass over the training split every
example is processed by exactly one worker: an epoch sees each example once, and a fast
worker takes more splits than a slow one. (OFF would make every worker produce the
whole split: with 2 workers each example arrives twice per pass.) The `repeat()` of the
training pipeline runs inside the service: the dispatcher hands out the splits again for
each pass, and one job serves the whole run. (Repeating on the client instead starts a
job per pass; on the 21-image membrane split that overhead held the rate at 20 images/s.)
Splits are shard files: use at least as many shards as service workers
(`tools/prepare_dataset.py --num_shards`), or one worker does all the work.

Fault behaviour (DYNAMIC is at-most-once): if a service worker dies mid-pass, the splits
it held are lost for that pass (those examples are skipped once) and the remaining
workers carry on; training does not stop. If the dispatcher dies, the client fails after
TF's retry period unless the dispatcher was started with --work_dir (fault-tolerant
mode, it restarts from its journal).
"""
import tensorflow as tf

POLICY = tf.data.experimental.service.ShardingPolicy.DYNAMIC


def distribute(dataset, address, job_name=None, compression=None):
    """One pass of `dataset`, processed on the service at `address` (grpc://HOST:PORT).

    compression=None: batches of uint8 pixels barely compress, and snappy on every batch
    cost more than the transfer on the local network we measured ("AUTO" to turn it on).
    """
    if not address.startswith("grpc://"):
        raise ValueError(f"--data_service={address!r}: expected grpc://HOST:PORT")
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=POLICY, service=address, job_name=job_name, compression=compression))
