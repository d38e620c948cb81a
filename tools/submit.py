"""Submit a multi-worker training job to a cluster.

    python tools/submit.py --scheduler=slurm --nodes=4 --gpus_per_node=8 --time=12:00:00 \
        --partition=gpu --setup="module load cuda" --dry_run -- --data_dir=... --model_dir=...
    python tools/submit.py --scheduler=kubernetes --nodes=2 --image=registry/segflow:1 -- ...

Everything after `--` goes to train.py (which gets --strategy=multi_worker). SLURM: writes
the sbatch script to --script and runs sbatch (prints the job id), or prints it with
--dry_run. Kubernetes: writes the manifests (Service + Indexed Job) to --script.
"""
import os
import sys

from absl import app, flags

import _bootstrap  # noqa: E402  (puts the project on sys.path; ROOT used below)
from segtrain import submit

FLAGS = flags.FLAGS
flags.DEFINE_enum("scheduler", "slurm", ["slurm", "kubernetes"], "Cluster scheduler.")
flags.DEFINE_integer("nodes", 1, "Nodes (SLURM) or worker pods (Kubernetes).")
flags.DEFINE_integer("gpus_per_node", 1, "GPUs per node / pod.")
flags.DEFINE_integer("cpus_per_task", 8, "CPUs per node's task (input pipeline threads).")
flags.DEFINE_string("time", "04:00:00", "Wall-clock limit (SLURM).")
flags.DEFINE_string("partition", "", "SLURM partition.")
flags.DEFINE_string("account", "", "SLURM account.")
flags.DEFINE_string("job_name", "segflow", "Job name.")
flags.DEFINE_string("output_dir", "slurm_logs", "Folder for the job's stdout/stderr files.")
flags.DEFINE_multi_string("setup", [], "Environment set-up lines run before training "
                          "(e.g. 'module load cuda', 'source venv/bin/activate').")
flags.DEFINE_string("python", "python", "Python executable on the nodes.")
flags.DEFINE_string("image", "segflow:latest", "Container image (Kubernetes).")
flags.DEFINE_string("script", "",
                    "Where to write the job file (default <job_name>.sbatch / .yaml).")
flags.DEFINE_bool("dry_run", False, "Print the job file and submit nothing.")


def main(argv):
    train_args = argv[1:]
    train_py = os.path.join(_bootstrap.ROOT, "train.py")
    if FLAGS.scheduler == "slurm":
        text = submit.slurm_script(train_args, FLAGS.nodes, FLAGS.gpus_per_node,
                                   FLAGS.cpus_per_task, FLAGS.time, FLAGS.partition,
                                   FLAGS.account, FLAGS.job_name, FLAGS.output_dir, FLAGS.setup,
                                   FLAGS.python, train_py)
        path = FLAGS.script or f"{FLAGS.job_name}.sbatch"
    else:
        text = submit.kubernetes_manifests(train_args, FLAGS.nodes, FLAGS.gpus_per_node,
                                           FLAGS.image, FLAGS.job_name, python=FLAGS.python)
        path = FLAGS.script or f"{FLAGS.job_name}.yaml"
    if FLAGS.dry_run:
        print(text, end="")
        return 0
    with open(path + ".partial", "w") as handle:
        handle.write(text)
    os.replace(path + ".partial", path)
    if FLAGS.scheduler == "kubernetes":
        print(f"wrote {path}; submit with: kubectl apply -f {path}")
        return 0
    try:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
        job = submit.submit_slurm(path)
    except ValueError as err:
        sys.stderr.write(f"submit: error: {err} (the script is in {path})\n")
        return 1
    print(f"submitted job {job} ({path})")
    return 0


if __name__ == "__main__":
    app.run(main)
