"""Which tf.distribute strategy and which precision policy a run uses, and who is chief."""
import json
import os

import keras
import tensorflow as tf
from absl import logging

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# CPU features with bfloat16 arithmetic in hardware; without them oneDNN emulates it.
NATIVE_BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def split_cpu(count):
    """Expose `count` logical CPU devices (tests MirroredStrategy for real without GPUs)."""
    if count > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def cluster_resolver():
    """TF_CONFIG when set, else SLURM's environment (srun), else None."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID"):
        port = int(os.environ.get("SEGFLOW_SLURM_PORT", "8888"))
        # Given explicitly so the resolver never shells out to nvidia-smi (absent on CPU nodes).
        step_gpus = os.environ.get("SLURM_STEP_GPUS") or os.environ.get("SLURM_JOB_GPUS") or ""
        gpus = int(os.environ.get("SLURM_GPUS_ON_NODE")
                   or len([g for g in step_gpus.split(",") if g]))
        return tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=port, gpus_per_node=gpus, gpus_per_task=gpus)
    return None


def make_strategy(name, logical_cpus=0):
    """Must run before any other TF op (MultiWorkerMirroredStrategy's rule)."""
    if name not in STRATEGIES:
        raise ValueError(f"--strategy={name!r}: expected one of {STRATEGIES}")
    if name == "multi_worker":
        resolver = cluster_resolver()
        if resolver is None:
            raise ValueError("--strategy=multi_worker needs TF_CONFIG or a SLURM job environment "
                             "(see tools/launch_local.py and tools/submit.py)")
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    split_cpu(logical_cpus)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "auto" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def choose_precision(name, capabilities=None):
    """auto: the weakest GPU decides: compute capability >= 8.0 (A100, H100) mixed_bfloat16,
    as fast as float16 there (BENCHMARKS.md §3) with no loss scaling and no skipped steps;
    7.x (V100, T4) mixed_float16 (tensor cores, no bfloat16); otherwise float32.
    `capabilities`: [(major, minor)] of the GPUs, default read from TensorFlow."""
    if name not in PRECISIONS:
        raise ValueError(f"--mixed_precision={name!r}: expected one of {PRECISIONS}")
    if name != "auto":
        return name
    if capabilities is None:
        capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability")
                        for gpu in tf.config.list_physical_devices("GPU")]
    if not capabilities or None in capabilities:
        return "float32"
    weakest = min(tuple(c) for c in capabilities)
    if weakest >= (8, 0):
        return "mixed_bfloat16"
    return "mixed_float16" if weakest >= (7, 0) else "float32"


def cpu_has_native_bfloat16(cpuinfo_path="/proc/cpuinfo"):
    """True / False from the CPU's feature flags; None where they cannot be read (not Linux)."""
    try:
        with open(cpuinfo_path) as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    features = set(line.partition(":")[2].split())
                    return any(flag in features for flag in NATIVE_BFLOAT16_CPU_FLAGS)
    except OSError:
        return None
    return None


def slow_precision_warning(policy, cpuinfo_path="/proc/cpuinfo"):
    """mixed_bfloat16 on a CPU that only emulates bfloat16 runs, yet several times slower than
    float32 (BENCHMARKS.md §10): the warning that says so, or None."""
    if policy != "mixed_bfloat16" or tf.config.list_physical_devices("GPU"):
        return None
    if cpu_has_native_bfloat16(cpuinfo_path) is not False:
        return None
    return ("--mixed_precision=mixed_bfloat16 on a CPU without bfloat16 hardware (none of "
            f"{', '.join(NATIVE_BFLOAT16_CPU_FLAGS)} in {cpuinfo_path}): TensorFlow emulates it, "
            "several times slower than float32; pass --mixed_precision=float32 on this machine")


def set_precision(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    logging.info("precision policy: %s", policy)


def task_info(strategy):
    """(task_type, task_id, is_chief) for any strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None, 0, True
    task_type, task_id = resolver.task_type, resolver.task_id
    cluster = resolver.cluster_spec().as_dict()
    is_chief = (task_type == "chief" or (task_type == "worker" and task_id == 0
                                          and "chief" not in cluster))
    return task_type, task_id, is_chief


def worker_dir(path, strategy):
    """Chief writes to `path`; other workers to a private temp folder (their saves are
    collective ops too, so they must save, just somewhere nobody reads)."""
    task_type, task_id, is_chief = task_info(strategy)
    if is_chief:
        return path
    return os.path.join(path, f".worker_{task_type}_{task_id}")


def agree_max(strategy, value):
    """The largest of every worker's `value` (a float), on every worker."""
    @tf.function  # eager collectives warn of their overhead
    def gather():
        return strategy.gather(strategy.run(lambda: tf.constant([value], tf.float32)), axis=0)
    return float(tf.reduce_max(gather()))  # ReduceOp has no MAX


def describe(strategy):
    return json.dumps({"strategy": type(strategy).__name__,
                       "replicas": strategy.num_replicas_in_sync})


def barrier(strategy):
    """Returns once every replica of every worker got here (one all-reduce).

    Before the workers read a file the chief writes (best.keras after training), so none
    reads it half written."""
    @tf.function
    def all_reduce():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.constant(1.0)))
    strategy.experimental_local_results(all_reduce())[0].numpy()
