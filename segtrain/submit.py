"""Cluster job files for multi-worker training: SLURM sbatch scripts and Kubernetes manifests.

Both start train.py with --strategy=multi_worker on every node; the cluster comes
from SLURM's environment (TF's SlurmClusterResolver) or from TF_CONFIG.
"""
import json
import shlex
import shutil
import subprocess


def slurm_script(train_args, nodes=1, gpus_per_node=1, cpus_per_task=8, time="04:00:00",
                 partition="", account="", job_name="segflow", output_dir="slurm_logs",
                 setup=(), python="python", train_py="train.py", port=8888):
    """One task per node; each task drives all GPUs of its node (MultiWorkerMirrored)."""
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        f"#SBATCH --time={time}",
        f"#SBATCH --output={output_dir}/%x-%j.out",
        f"#SBATCH --error={output_dir}/%x-%j.err",
    ]
    if gpus_per_node:
        lines.insert(4, f"#SBATCH --gpus-per-node={gpus_per_node}")
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if account:
        lines.append(f"#SBATCH --account={account}")
    lines += ["", "set -euo pipefail", *setup,
              "# SlurmClusterResolver reads SLURM_* to build the cluster spec; port for workers:",
              f"export SEGFLOW_SLURM_PORT={port}",
              "srun --kill-on-bad-exit=1 " + " ".join(
                  [shlex.quote(python), shlex.quote(train_py), "--strategy=multi_worker"]
                  + [shlex.quote(a) for a in train_args])]
    return "\n".join(lines) + "\n"


def submit_slurm(script_path):
    """Runs sbatch; returns the job id."""
    if shutil.which("sbatch") is None:
        raise ValueError("sbatch not found: run this on a SLURM login node, or pass --dry_run "
                         "to print the script")
    result = subprocess.run(["sbatch", "--parsable", script_path], capture_output=True, text=True)
    if result.returncode != 0:
        raise ValueError(f"sbatch failed: {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def kubernetes_manifests(train_args, workers=2, gpus_per_worker=1, image="segflow:latest",
                         job_name="segflow", port=2222, python="python", train_py="train.py"):
    """A headless Service plus an Indexed Job: pod i gets TF_CONFIG with task index i."""
    hosts = [f"{job_name}-{i}.{job_name}:{port}" for i in range(workers)]
    cluster = json.dumps({"worker": hosts})
    command = " ".join([python, train_py, "--strategy=multi_worker"]
                       + [shlex.quote(a) for a in train_args])
    set_config = ("export TF_CONFIG=\"{\\\"cluster\\\": " + cluster.replace('"', '\\"')
                  + ", \\\"task\\\": {\\\"type\\\": \\\"worker\\\", \\\"index\\\": "
                  "$JOB_COMPLETION_INDEX}}\"")
    gpu_limit = (f"\n            resources:\n              limits:\n"
                 f"                nvidia.com/gpu: {gpus_per_worker}") if gpus_per_worker else ""
    return f"""apiVersion: v1
kind: Service
metadata:
  name: {job_name}
spec:
  clusterIP: None
  selector:
    job-name: {job_name}
  ports:
    - port: {port}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: {job_name}
spec:
  completionMode: Indexed
  completions: {workers}
  parallelism: {workers}
  backoffLimit: 0
  template:
    spec:
      subdomain: {job_name}
      restartPolicy: Never
      containers:
        - name: worker
          image: {image}
          command: ["/bin/bash", "-c"]
          args:
            - >-
              {set_config} && {command}
          ports:
            - containerPort: {port}{gpu_limit}
"""
