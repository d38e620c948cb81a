"""The tf.data input pipeline: `training_dataset` and `evaluation_dataset`, both built from
the run's spec.InputSpec, one reader underneath, read top to bottom:

    shard files -> (worker shard) -> interleave TFRecordDataset -> [shuffle -> repeat]
    -> enumerate (the per-example seed) -> parse + decode + resize + augment (one warp)
    -> batch -> prefetch

Elements are dicts: {"image": uint8[B,H,W,C], "mask": uint8[B,H,W,1]}, plus "seed"
(int64[B,2], for augmentation on the device), "id" (string[B]) and "weight" (float32[B]:
0 for the padding that evens out evaluation batches) when asked for.

with `cache`, decoding moves before the shuffle: parse + decode -> cache -> [shuffle ->
repeat] -> enumerate -> resize + augment.

Images stay uint8 all the way: normalisation is the model's first layer, so the
host sends a quarter of the bytes float32 would need and exported models take
raw pixels.
"""

import tensorflow as tf

from segdata import augment, records

AUTOTUNE = tf.data.AUTOTUNE


def _even_file_shards(counts, pipelines):
    """True when every-n-th-file sharding gives each pipeline as many files and examples:
    otherwise a pipeline with less would start its next pass inside an epoch (3 shards on
    2 workers: one worker reads its one shard twice while the other reads two once)."""
    if len(counts) < pipelines or len(counts) % pipelines:
        return False
    return len({sum(counts[i::pipelines]) for i in range(pipelines)}) == 1


def _sharded_files(files, counts, input_context, shuffle, seed, by_data):
    """FILE sharding when the shards divide evenly over the input pipelines (and `by_data`
    is False), else DATA (see below)."""
    dataset = tf.data.Dataset.from_tensor_slices(files)
    by_file = (input_context is not None and not by_data
               and _even_file_shards(counts, input_context.num_input_pipelines))
    if by_file:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return dataset, by_file


def training_dataset(records_dir, spec, batch_size, augment_config=None, seed=0,
                     input_context=None, augment_on="host", start_index=0, mask_fill=None,
                     cache=False, skip_corrupt=False, on_service=False, with_ids=False,
                     shuffle=True, repeat=True, shuffle_buffer=256, deterministic=True):
    """Training batches at `spec.training_size`: shuffled, repeated, augmented, the last
    partial batch dropped.

    `spec`: the run's spec.InputSpec; `augment_config`: the random part (AugmentConfig).
    `batch_size` is per input pipeline (use input_context.get_per_replica_batch_size).
    `seed`: the run's seed, the same in every input pipeline: it orders the files, and each
    pipeline derives its own for its example order and augmentation seeds.
    `augment_on="device"` leaves only decode + resize (or the scaled window) here and yields
    each example's seed for `augment.augment_batch` inside the train step.
    `start_index` offsets the per-example seeds (a resumed run continues the stream).
    `mask_fill`: mask value of pixels a warp brings in (default the ignore label).
    `skip_corrupt` drops unreadable records with a logged warning instead of failing.
    `on_service`: the pipeline runs on tf.data service workers, each counting its own
    examples; the seeds' first part is then a random number drawn per example instead of
    `seed`, so no two workers give an example the same seed (the service's order is not
    reproducible anyway).
    """
    return _build(
        records_dir, "train", spec, batch_size,
        augment_config=augment_config or augment.AugmentConfig(xla=spec.xla), training=True,
        shuffle=shuffle, repeat=repeat, seed=seed, input_context=input_context,
        augment_on=augment_on, start_index=start_index,
        mask_fill=spec.ignore_label if mask_fill is None else mask_fill, cache=cache,
        skip_corrupt=skip_corrupt, on_service=on_service, with_ids=with_ids,
        pad_batches=False, shuffle_buffer=shuffle_buffer, deterministic=deterministic)


def evaluation_dataset(records_dir, split, spec, batch_size, input_context=None,
                       pad_batches=False, with_ids=False, cache=False, skip_corrupt=False,
                       deterministic=True):
    """Every example of `split` once, in stored order, mapped as serving maps a frame:
    `spec.image_size` by its resize policy, or (the "scale" policy) the whole frame at
    `spec.data_scale` on that canvas, padding masked with the ignore label.
    `pad_batches` (evaluation under a strategy): each input pipeline reads every n-th example
    and then padding (mask all ignore, weight 0) up to ceil(examples / global batch)
    batches per replica, so every replica runs the same number of steps (a collective never
    waits for a replica that ran out) and every example still counts exactly once.
    """
    return _build(
        records_dir, split, spec, batch_size, augment_config=augment.AugmentConfig(xla=spec.xla),
        training=False, shuffle=False, repeat=False, seed=0, input_context=input_context,
        augment_on="host", start_index=0, mask_fill=spec.ignore_label, cache=cache,
        skip_corrupt=skip_corrupt, on_service=False, with_ids=with_ids,
        pad_batches=pad_batches, shuffle_buffer=0, deterministic=deterministic)


def _build(records_dir, split, spec, batch_size, *, augment_config, training, shuffle, repeat,
           seed, input_context, augment_on, start_index, mask_fill, cache, skip_corrupt,
           on_service, with_ids, pad_batches, shuffle_buffer, deterministic):
    out_size = spec.training_size if training else spec.image_size
    resize = spec.resize
    if augment_on not in ("host", "device"):
        raise ValueError(f"augment_on={augment_on!r}: expected host or device")

    manifest = records.load_manifest(records_dir)
    files = records.list_shards(records_dir, split, manifest)
    if not files:
        raise records.RecordsError(f"{records_dir}: split {split!r} has no examples")
    compression = records.compression_of(manifest)

    counts = [shard["count"] for shard in manifest["splits"][split]["shards"]]
    # `seed` orders the files: the same order in every input pipeline, or sharding by data
    # (every n-th example) would not share the examples out; each pipeline's example order
    # and augmentation seeds come from its own seed
    pipeline_seed = seed + 7919 * (input_context.input_pipeline_id if input_context else 0)
    dataset, by_file = _sharded_files(files, counts, input_context, shuffle, seed,
                                      by_data=pad_batches)
    dataset = dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
        cycle_length=min(len(files), 8), num_parallel_calls=AUTOTUNE,
        deterministic=deterministic)
    if input_context is not None and not by_file:
        # Fewer shards than workers: every worker reads all files and keeps every n-th example.
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)

    stored_channels = manifest.get("channels", 3)
    kernel_canvas = _kernel_canvas(manifest)
    want_channels = spec.channels
    # --augment_on=device: only the windows' random scale and place here, the rest there
    host_config = augment_config if augment_on == "host" else augment.AugmentConfig(
        xla=augment_config.xla, scale=augment_config.scale,
        crop_foreground=augment_config.crop_foreground)
    # Decoded with the stored channels, given explicitly so the shape is static; gray records
    # wanted as RGB are augmented on one channel and expanded last
    # (no AutoGraph, like `transform` below: plain TF ops)
    decode = tf.autograph.experimental.do_not_convert(
        lambda raw: records.decode(records.parse_raw(raw), stored_channels, spec.intensity))
    # Without a cache, records are shuffled still encoded and decoded in the same map as the
    # augmentation: the shuffle buffer holds compressed bytes instead of decoded frames
    # (peak RSS 1093 -> 866 MB on the RGB benchmark set, same speed: BENCHMARKS.md §2).
    decode_late = not cache
    if cache:
        dataset = dataset.map(decode, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
        if skip_corrupt:
            dataset = dataset.ignore_errors(log_warning=True)
        dataset = dataset.cache()
    if shuffle:
        # shuffle before repeat: each epoch is a full permutation, no example twice per epoch
        dataset = dataset.shuffle(shuffle_buffer, seed=pipeline_seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.enumerate(start=start_index)

    # RGB records asked for as gray: grey levels are a weighted sum of the channels, which
    # warps and brightness/contrast commute with (up to rounding, and clipping at 0/255,
    # which now clips the gray, not each colour), so converting first augments one channel
    # instead of three; saturation and hue need the colours.
    gray_first = stored_channels == 3 and want_channels == 1 and not (
        host_config.saturation or host_config.hue)

    def transform(index, example):
        if decode_late:
            example = decode(example)
        image = augment.to_gray(example["image"], host_config.xla) if gray_first \
            else example["image"]
        # on the service, seed=seed2=0 seeds the op at random per instance, i.e. per worker,
        # whatever the global seed (tf.random.* would take one from it: the same everywhere);
        # a second source for a per-worker constant would be split by DYNAMIC sharding too
        first = tf.raw_ops.RandomUniformInt(
            shape=tf.constant([], tf.int32), minval=tf.constant(0, tf.int64),
            maxval=tf.constant(2**62, tf.int64), seed=0, seed2=0) if on_service \
            else tf.constant(pipeline_seed, tf.int64)
        example_seed = tf.stack([first, index])
        image, mask = augment.augment_example(
            image, example["mask"], example_seed, out_size, host_config, resize,
            training=training, mask_fill=mask_fill, channels=want_channels,
            data_scale=spec.data_scale, ignore_label=spec.ignore_label, pad_to=kernel_canvas)
        if want_channels == 1 and image.shape[-1] == 3:
            image = augment.to_gray(image, host_config.xla)
        out = {"image": tf.ensure_shape(image, out_size + (want_channels,)), "mask": mask}
        if training and augment_on == "device":
            out["seed"] = example_seed
        if with_ids:
            out["id"] = example["id"]
        if pad_batches:
            out["weight"] = tf.constant(1.0)
        return out

    # Plain TF ops with no tensor-dependent Python control flow: AutoGraph would only rewrite
    # the whole augmentation's source again in every process (BENCHMARKS.md §10)
    transform = tf.autograph.experimental.do_not_convert(transform)
    dataset = dataset.map(transform, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if decode_late and skip_corrupt:
        dataset = dataset.ignore_errors(log_warning=True)
    if pad_batches:
        dataset = _padded(dataset, manifest["splits"][split]["count"], batch_size, input_context,
                          spec.ignore_label)
    dataset = dataset.batch(batch_size, drop_remainder=training and repeat,
                            num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    options = tf.data.Options()
    options.deterministic = deterministic
    if input_context is not None:
        # We sharded above; stop tf.distribute from sharding a second time.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(AUTOTUNE)


def _kernel_canvas(manifest):
    """The largest frame of any split, rounded up to 64 pixels a side: every frame is padded
    to it for the XLA kernel, which then compiles once per output size instead of once per
    size bucket (BENCHMARKS.md §2.2). None for manifests without frame sizes."""
    sizes = [split.get("max_size") for split in manifest["splits"].values()]
    sizes = [size for size in sizes if size]
    if not sizes:
        return None
    return tuple(-(-max(size[axis] for size in sizes) // 64) * 64 for axis in (0, 1))


def _padded(dataset, count, batch_size, input_context, ignore_label):
    """`dataset` (one pipeline's examples) followed by weight-0 copies of a blank example,
    its mask all `ignore_label`, up to the slots of ceil(count / global batch) batches per
    replica."""
    pipelines = input_context.num_input_pipelines if input_context else 1
    replicas = input_context.num_replicas_in_sync if input_context else 1
    steps = -(-count // (batch_size * replicas))
    slots = steps * batch_size * replicas // pipelines
    spec = dataset.element_spec
    blank = {key: tf.zeros(s.shape, s.dtype) if s.dtype != tf.string else tf.constant("")
             for key, s in spec.items()}
    blank["mask"] = tf.fill(spec["mask"].shape, tf.constant(ignore_label, spec["mask"].dtype))
    return dataset.concatenate(tf.data.Dataset.from_tensors(blank).repeat()).take(slots)

