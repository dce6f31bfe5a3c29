#!/usr/bin/env bash
# Run a command on a Ray cluster spread over this SLURM job's nodes (a verl train job of several
# nodes: clipbench.study.verl_launcher; docs/training.md, "Training inside verl"):
#   bash workflows/scripts/verl_ray_slurm.sh NODES GPUS_PER_NODE COMMAND...
# Ray's head starts on the allocation's first node, a worker on each other node (srun, one task
# each), then COMMAND runs on the head node with RAY_ADDRESS set, so verl's main_ppo joins that
# cluster instead of starting its own; the Ray processes are stopped when it ends. The recipe is
# verl's own multi-node SLURM example (examples/slurm/ray_on_slurm.slurm in verl's repository).
# Not run here (no SLURM, no GPUs where clipbench is built): checked by `bash -n` and its arguments.
set -euo pipefail

if [ "$#" -lt 3 ]; then
  echo "usage: $0 NODES GPUS_PER_NODE COMMAND..." >&2
  exit 2
fi
nodes=$1
gpus=$2
shift 2
case "$nodes,$gpus" in
  *[!0-9,]* | ,* | *, | 0,* | *,0) echo "$0: NODES and GPUS_PER_NODE must be positive integers, got '$nodes' '$gpus'" >&2; exit 2 ;;
esac
if [ -z "${SLURM_JOB_NODELIST:-}" ]; then
  echo "$0: not inside a SLURM job (SLURM_JOB_NODELIST unset): $nodes nodes need the SLURM profile" >&2
  exit 2
fi
mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
if [ "${#hosts[@]}" -ne "$nodes" ]; then
  echo "$0: the job has ${#hosts[@]} nodes (${hosts[*]}), the study asks for $nodes (resources.train.nodes)" >&2
  exit 2
fi
head=${hosts[0]}
head_ip=$(srun --overlap --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
port=${RAY_PORT:-6379}
cpus=${SLURM_CPUS_PER_TASK:-1}

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

srun --overlap --nodes=1 --ntasks=1 -w "$head" ray start --head --node-ip-address="$head_ip" --port="$port" \
  --num-cpus "$cpus" --num-gpus "$gpus" --block &
pids+=($!)
for _ in $(seq 90); do  # the head answers within 3 min, or the job fails here
  ray status --address "$head_ip:$port" >/dev/null 2>&1 && break
  sleep 2
done
ray status --address "$head_ip:$port" >/dev/null || { echo "$0: the Ray head at $head_ip:$port did not start" >&2; exit 1; }
for host in "${hosts[@]:1}"; do
  srun --overlap --nodes=1 --ntasks=1 -w "$host" ray start --address "$head_ip:$port" \
    --num-cpus "$cpus" --num-gpus "$gpus" --block &
  pids+=($!)
done
sleep 10

RAY_ADDRESS="$head_ip:$port" srun --overlap --nodes=1 --ntasks=1 -w "$head" "$@"
