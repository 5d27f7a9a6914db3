#!/usr/bin/env bash
# Times the README's "Distill a real model" commands, in order, on a fresh clone of this
# repository's committed main (as a new user runs them): install, import, prune, data instruct,
# eval of the pruned student, 100-step kd train, eval, and the served student answering a chat
# request over HTTP. Each step's seconds and the load average go to the log (about 1 h on an idle
# 2-core machine; the load average says whether it was idle).
#   bash benchmarks/real_commands.sh [WORKDIR]   (default /tmp/distill-ray-real-commands)
set -uo pipefail
src=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=${1:-/tmp/distill-ray-real-commands}
mkdir -p "$work" && cd "$work" && rm -rf repo && git clone -q --branch main "$src" repo && cd repo
[ -d "$src/../shared" ] && ln -sfn "$src/../shared" ../shared
echo "fresh clone of $(git log -1 --format='%h %s') in $work/repo"
step() {
  local name="$1"; shift; local t0; t0=$(date +%s)
  echo "=== $name: $* (load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$@"; local rc=$?
  echo "=== $name: rc=$rc, $(( $(date +%s) - t0 )) s (load $(cut -d' ' -f1-3 /proc/loadavg))"
  return $rc
}
step install make install || exit 1
. .venv/bin/activate
T=local/models/smollm2-135m-instruct
step import distill-ray models import || exit 1
step prune distill-ray models prune --from $T --layers 6 --out local/models/smollm2-6l || exit 1
step data distill-ray data instruct --teacher $T --out local/data/instruct || exit 1
step eval_pruned distill-ray eval --model local/models/smollm2-6l --data local/data/instruct/test.jsonl \
    --teacher $T --max-examples 40 --max-new-tokens 128 --out local/runs/pruned-eval.json || exit 1
step train distill-ray train configs/real.yaml --set method.name=kd --set trainer.output_dir=local/runs/real-kd || exit 1
step eval_trained distill-ray eval --model local/runs/real-kd/student --data local/data/instruct/test.jsonl \
    --teacher $T --max-examples 40 --max-new-tokens 128 || exit 1
t0=$(date +%s)
echo "=== serve: serve run distill_ray.serve.student:build_app model=$PWD/local/runs/real-kd/student name=smollm2-student"
set -m  # job control: a background job of a script ignores SIGINT otherwise, and Ctrl-C is how serve run stops
serve run distill_ray.serve.student:build_app model="$PWD/local/runs/real-kd/student" name=smollm2-student > serve.log 2>&1 &
spid=$!
for _ in $(seq 1 120); do curl -sf 127.0.0.1:8000/health >/dev/null && break; sleep 5; done
echo "=== serve: up after $(( $(date +%s) - t0 )) s"
curl -s 127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \
  -d '{"model": "smollm2-student", "messages": [{"role": "user", "content": "Give me three colours."}], "max_tokens": 32, "temperature": 0}'
echo
kill -INT $spid; wait $spid
echo "=== serve: stopped, $(( $(date +%s) - t0 )) s in all"
