#!/usr/bin/env bash
# Smoke test of `guardian agent` on a real NVIDIA GPU: what NVML reports, and when the agent
# decides. Runs from the repository root on a GPU machine, in about three minutes:
#
#   1. nvidia-smi's view of the GPUs (count, UUIDs, driver), compared with `guardian agent
#      status --json` (one direct NVML sample: same GPUs, same UUIDs, numbers not zeros);
#   2. the agent starts (1 s interval; released window 60 s, held window 120 s, no min uptime);
#   3. a load: a tiny CUDA program (compiled here with nvcc), else torch or cupy, holds 512 MiB
#      and keeps GPU 0 busy for LOAD_SECONDS. Checks: the agent sees the process (its PID and
#      name) and the utilisation, and never calls the machine idle while it runs;
#   4. the load exits: the agent must see no process and memory released, then call the
#      machine idle about 60 s later (the released window) — not before, not much after;
#   5. the Prometheus endpoint, then SIGTERM: exit 0 and the status file removed.
# Without a load tool the load phase is skipped with a message, and the idle checks still run.
#
# Exit: 0 all checks passed, 1 a check failed, 77 skipped (no NVIDIA driver here: only the
# "NVML not available" path was checked). Results: $OUT/gpu_smoke.json and the agent's log
# (in $OUT when set, else a temporary directory that is printed).
#
# Environment: GUARDIAN_PYTHON (a Python that imports guardian; default .venv/bin/python,
# else python3 with build/agent-site on PYTHONPATH — see --prepare), LOAD_SECONDS (45),
# SMOKE_FAKE=1 runs the same script against the fake NVML (a rehearsal on any machine).
#
#   bench/gpu_smoke.sh --prepare   # on a machine with network and the GPU box's Python
#                                  # version: pip-installs the agent's dependencies into
#                                  # build/agent-site, small enough to carry to the GPU box
set -euo pipefail
cd "$(dirname "$0")/.."

LOAD_SECONDS="${LOAD_SECONDS:-45}"
RELEASED_S=60
HELD_S=120
OUT_DIR="${OUT:-$(mktemp -d -t gpu-smoke.XXXXXX)}"
mkdir -p "$OUT_DIR"
WORK="$(mktemp -d -t gpu-smoke-work.XXXXXX)"
AGENT_PID=""
LOAD_PID=""
cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
    [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
say() { printf '[gpu-smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# -- a Python that can run the agent ------------------------------------------------------------
find_python() {
    local candidates=("${GUARDIAN_PYTHON:-}" .venv/bin/python python3)
    for py in "${candidates[@]}"; do
        [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 || continue
        if PYTHONPATH="$PWD:$PWD/build/agent-site${PYTHONPATH:+:$PYTHONPATH}" \
            "$py" -c 'import guardian.cli, pynvml' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

if [ "${1:-}" = "--prepare" ]; then
    py="${GUARDIAN_PYTHON:-python3}"
    say "installing the agent's dependencies for $("$py" -V) into build/agent-site"
    "$py" -m pip install --quiet --target build/agent-site --upgrade \
        'pydantic>=2.7,<3' 'PyYAML>=6,<7' 'structlog>=24.1' 'typer>=0.12,<1' 'rich>=13.7' \
        'prometheus-client>=0.20,<1' 'nvidia-ml-py>=12.535'
    du -sh build/agent-site
    exit 0
fi

if ! PY="$(find_python)"; then
    say "FAIL: no Python here imports guardian and pynvml."
    say "      set GUARDIAN_PYTHON, or run 'bench/gpu_smoke.sh --prepare' (see the header)."
    exit 1
fi
export PYTHONPATH="$PWD:$PWD/build/agent-site${PYTHONPATH:+:$PYTHONPATH}"
# The console script may not exist here (build/agent-site): call its entry point directly.
GUARDIAN=("$PY" -c 'import sys; sys.argv[0] = "guardian"; from guardian.cli import main; main()')
say "python: $PY ($("$PY" -V 2>&1)), output: $OUT_DIR"

# -- 1. the driver's own view -------------------------------------------------------------------
if [ "${SMOKE_FAKE:-}" = "1" ]; then
    say "SMOKE_FAKE=1: rehearsal against the fake NVML, no GPU involved"
    cat >"$WORK/scenario.json" <<EOF
{"gpus": 1, "model": "NVIDIA FAKE", "phases": [
  {"for": "8s", "util_pct": 0, "mem_used_mib": 1, "processes": []},
  {"for": "${LOAD_SECONDS}s", "util_pct": 99, "mem_used_mib": 512,
   "processes": [{"pid": 5000042, "name": "gpuload", "mem_mib": 512}]},
  {"util_pct": 0, "mem_used_mib": 1, "processes": []}]}
EOF
    export GUARDIAN_NVML_BACKEND="fake:$WORK/scenario.json"
    SMI_UUIDS=""
    SMI_MEM=""
elif ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    say "no working nvidia-smi: checking only that the agent says so in one line"
    set +e
    message="$("${GUARDIAN[@]}" agent --run-dir "$WORK/run" 2>&1)"
    rc=$?
    set -e
    say "guardian agent -> exit $rc: $message"
    if [ "$rc" -eq 2 ] && [ "$(printf '%s\n' "$message" | wc -l)" -eq 1 ] \
        && [[ "$message" == *"NVML not available: "* ]]; then
        say "SKIPPED: no NVIDIA GPU here (the no-NVML path is correct)"
        exit 77
    fi
    say "FAIL: expected exit 2 and one line 'NVML not available: ...'"
    exit 1
else
    nvidia-smi --query-gpu=index,uuid,name,driver_version,utilization.gpu,memory.used,memory.total \
        --format=csv | tee "$OUT_DIR/nvidia-smi.csv"
    SMI_UUIDS="$(nvidia-smi --query-gpu=uuid --format=csv,noheader | tr -d ' ' | paste -sd, -)"
    SMI_MEM="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | tr -d ' ' | paste -sd, -)"
fi

"${GUARDIAN[@]}" agent status --json --run-dir "$WORK/run" >"$OUT_DIR/status-direct.json"

# -- 2. the agent ---------------------------------------------------------------------------------
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"${GUARDIAN[@]}" --log-format json agent --run-dir "$WORK/run" \
    --set agent.interval=1s --set "agent.listen=127.0.0.1:$PORT" \
    --set "idle.window_released=${RELEASED_S}s" --set "idle.window=${HELD_S}s" \
    --set idle.min_uptime=0s --set idle.min_coverage=0.1 \
    2>"$OUT_DIR/agent.log" &
AGENT_PID=$!  # the Python process itself, so SIGTERM reaches the agent
for _ in $(seq 1 100); do
    [ -f "$WORK/run/agent-status.json" ] && break
    kill -0 "$AGENT_PID" 2>/dev/null || { say "FAIL: the agent exited"; cat "$OUT_DIR/agent.log"; exit 1; }
    sleep 0.1
done
say "agent running (pid $AGENT_PID, Prometheus on 127.0.0.1:$PORT)"

# -- 3. a load ------------------------------------------------------------------------------------
LOAD_KIND=none
start_load() {
    if [ "${SMOKE_FAKE:-}" = "1" ]; then
        sleep 8  # the scenario's load starts 8 s after the agent
        (exec -a gpuload sleep "$LOAD_SECONDS") &
        LOAD_PID=$!
        LOAD_KIND=fake
        return
    fi
    if command -v nvcc >/dev/null 2>&1; then
        cat >"$WORK/gpuload.cu" <<'EOF'
// Keeps GPU 0 busy for argv[1] seconds while holding 512 MiB: a job for NVML to see.
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <cuda_runtime.h>
__global__ void spin(float *x, int n, int iters) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { float v = x[i]; for (int k = 0; k < iters; ++k) v = v * 1.000001f + 0.5f; x[i] = v; }
}
static double now() { timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 30.0, start = now();
    size_t bytes = (size_t)512 << 20;
    int n = (int)(bytes / sizeof(float));
    float *x;
    if (cudaMalloc(&x, bytes) != cudaSuccess) { fprintf(stderr, "cudaMalloc failed\n"); return 1; }
    cudaMemset(x, 0, bytes);
    while (now() - start < seconds) {
        spin<<<(n + 255) / 256, 256>>>(x, n, 100);
        cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) { fprintf(stderr, "%s\n", cudaGetErrorString(e)); return 1; }
    }
    cudaFree(x);
    return 0;
}
EOF
        # This GPU's architecture, else PTX for every GPU since Turing (JIT-compiled at start).
        if nvcc -O2 -arch=native -o "$WORK/gpuload" "$WORK/gpuload.cu" 2>"$WORK/nvcc.log" \
            || nvcc -O2 -gencode arch=compute_75,code=compute_75 -o "$WORK/gpuload" \
                "$WORK/gpuload.cu" 2>>"$WORK/nvcc.log"; then
            "$WORK/gpuload" "$LOAD_SECONDS" 2>"$WORK/gpuload.err" &
            LOAD_PID=$!
            sleep 2  # a toolkit newer than the driver fails at once: then try another way
            if kill -0 "$LOAD_PID" 2>/dev/null; then
                LOAD_KIND=cuda
                return
            fi
            wait "$LOAD_PID" || true
            LOAD_PID=""
            say "the CUDA load did not run ($(tail -1 "$WORK/gpuload.err")); trying Python"
        else
            say "nvcc could not build the load ($(tail -1 "$WORK/nvcc.log")); trying Python"
        fi
    fi
    for module in torch cupy; do
        if "$PY" -c "import $module" 2>/dev/null; then
            "$PY" - "$LOAD_SECONDS" "$module" <<'EOF' &
import sys, time
seconds, module = float(sys.argv[1]), sys.argv[2]
if module == "torch":
    import torch
    x = torch.randn(8192, 8192, device="cuda")
    sync = torch.cuda.synchronize
else:
    import cupy
    x = cupy.random.rand(8192, 8192, dtype=cupy.float32)
    sync = cupy.cuda.Device().synchronize
start = time.monotonic()
while time.monotonic() - start < seconds:
    x = (x @ x) / 8192.0
    sync()
EOF
            LOAD_PID=$!
            LOAD_KIND="$module"
            return
        fi
    done
    say "no load tool (nvcc, torch, cupy): SKIPPING the load phase; the idle checks still run"
}
start_load
LOAD_STARTED="$(date +%s.%N)"
[ -n "$LOAD_PID" ] && say "load: $LOAD_KIND, pid $LOAD_PID, ${LOAD_SECONDS}s on GPU 0"

# -- 4. watch the agent until it calls the machine idle, then check ------------------------------
set +e
"$PY" - "$WORK/run/agent-status.json" "$OUT_DIR" "${LOAD_PID:-0}" "$LOAD_KIND" "$LOAD_STARTED" \
    "$RELEASED_S" "$HELD_S" "$SMI_UUIDS" "$PORT" "$SMI_MEM" <<'EOF'
import json, os, sys, time, urllib.request
status_path, out_dir, load_pid, load_kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
load_started, released_s, held_s = float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
smi_uuids = [u for u in sys.argv[8].split(",") if u]
port = sys.argv[9]
smi_mem = [float(m) for m in sys.argv[10].split(",") if m]
failures, timeline = [], []

def check(ok, what):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)

def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # a zombie (exited, not yet reaped by the shell) is not running
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

direct = json.load(open(os.path.join(out_dir, "status-direct.json")))
print("direct NVML sample (guardian agent status, no agent running):")
check(len(direct["gpus"]) == direct["expected_gpus"] > 0, f"{len(direct['gpus'])} GPU(s) read")
if smi_uuids:
    check([g["uuid"] for g in direct["gpus"]] == smi_uuids, "UUIDs match nvidia-smi, in order")
check(all(isinstance(g["gpu_util_pct"], float) for g in direct["gpus"]), "utilisation read")
if smi_mem:
    # NVML's v2 memory call, as nvidia-smi: the driver's reserved memory is not "used". Read a
    # few seconds apart, so only a gross difference (v1's hundreds of MiB) fails.
    diffs = [abs((g["mem_used_mib"] or 0) - m) for g, m in zip(direct["gpus"], smi_mem)]
    check(max(diffs) <= 128, f"memory used matches nvidia-smi (largest difference {max(diffs):g} MiB)")
check(all((g["mem_total_mib"] or 0) > 0 for g in direct["gpus"]), "memory total read (not 0)")
check(not direct["problems"] and not any(g["problems"] for g in direct["gpus"]), "no NVML problem")

deadline = time.time() + 60 + held_s + released_s + 120
saw_process = saw_busy = idle_during_load = False
load_ended = idle_at = released_at = None
while time.time() < deadline:
    try:
        doc = json.load(open(status_path))
    except (OSError, ValueError):
        time.sleep(0.3)
        continue
    t = time.time() - load_started
    gpu0 = doc["gpus"][0] if doc["gpus"] else {}
    procs = gpu0.get("processes") or []
    row = {"t_s": round(t, 1), "verdict": doc["verdict"], "util": gpu0.get("gpu_util_pct"),
           "mem_mib": gpu0.get("mem_used_mib"), "pids": [p["pid"] for p in procs],
           "names": [p["name"] for p in procs], "idle_min": doc["idle_minutes"]}
    if not timeline or {k: v for k, v in row.items() if k != "t_s"} != {
        k: v for k, v in timeline[-1].items() if k != "t_s"
    }:
        timeline.append(row)
        print(f"  t={row['t_s']:6.1f}s verdict={row['verdict']:<10} util={row['util']} "
              f"mem={row['mem_mib']} procs={list(zip(row['pids'], row['names']))}")
    loading = load_pid > 0 and alive(load_pid)
    if loading:
        if load_kind == "fake" or load_pid in row["pids"]:
            saw_process = True
        if (row["util"] or 0) >= 50:
            saw_busy = True
        if doc["verdict"] == "idle":
            idle_during_load = True
    elif load_pid > 0 and load_ended is None:
        load_ended = time.time()
    if load_ended is not None and released_at is None and not any(
        g.get("processes") for g in doc["gpus"]
    ):
        released_at = time.time()
    if doc["verdict"] == "idle" and (load_pid == 0 or load_ended is not None):
        idle_at = time.time()
        break
    time.sleep(0.5)

print(f"agent during and after the load ({load_kind}):")
if load_pid > 0:
    check(saw_process, "the load's process was listed on GPU 0 (pid and name)")
    check(saw_busy, "GPU 0 utilisation reached 50% or more under load")
    check(not idle_during_load, "never idle while the load ran")
    check(load_ended is not None and released_at is not None
          and released_at - load_ended < 10, "process gone from NVML within 10 s of exiting")
check(idle_at is not None, "the machine was called idle after the load")
after = None
if idle_at is not None:
    after = idle_at - (load_ended or load_started)
    # The released window counts from the first idle sample, plus one poll of rounding and
    # up to a couple of polls of NVML's own utilisation averaging (a ~1 s sliding window).
    ok = released_s - 3 <= after <= released_s + 10 if load_pid > 0 else after <= held_s + 10
    check(ok, f"idle {after:.1f} s after the load ended (released window {released_s:.0f} s)")
with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
    scrape = response.read().decode()
check('guardian_agent_gpu_utilization_percent{gpu="0"' in scrape, "Prometheus serves GPU 0")
check('guardian_agent_verdict{verdict="idle"} 1.0' in scrape, "Prometheus shows the verdict")
summary = {"load": load_kind, "idle_after_load_s": after, "failures": failures,
           "timeline": timeline, "direct_sample": direct}
json.dump(summary, open(os.path.join(out_dir, "gpu_smoke.json"), "w"), indent=2)
sys.exit(1 if failures else 0)
EOF
checks=$?
set -e

# -- 5. a clean exit ------------------------------------------------------------------------------
kill -TERM "$AGENT_PID"
set +e
wait "$AGENT_PID"
agent_rc=$?
set -e
AGENT_PID=""
if [ "$agent_rc" -ne 0 ] || [ -f "$WORK/run/agent-status.json" ]; then
    say "FAIL: the agent exited with $agent_rc on SIGTERM (or left its status file)"
    exit 1
fi
say "agent exited cleanly; results in $OUT_DIR/gpu_smoke.json"
[ "$checks" -eq 0 ] && say "PASS" || say "FAIL"
exit "$checks"
