#!/usr/bin/env bash
# The GPU part of `bench engines`, run on a bare CUDA machine (no network, python3 + numpy).
# Stage "build": build llama-server, llama-batched-bench and llama-quantize with CUDA from the
# llama.cpp source llama-cpp-python vendors, write a Mixtral-shaped Q4_K_M model with random
# weights, and benchmark it. Stage "smol": benchmark the embedded SmolLM2-135M model (carried in
# two parts: the transfer limit is smaller than the file), and whatever the first stage left.
# Each model: llama-batched-bench -npp 512 -ntg 128 -npl 1,4,16,32, then llama-server -np N at
# N = 1, 4, 16, 32 with the desk's recorded request stream replayed at N in flight
# (scripts/gpu_engines_bench.py replay). Results: $OUT/results.jsonl; logs: $OUT/logs_*.tgz.
#
#   G=.gpu OUT=/some/dir bash scripts/gpu_engines_bench.sh build 560   # stage, seconds it may use
set -u
STAGE=$1; BUDGET=${2:-560}; T0=$(date +%s)
G=${G:-.gpu}; W=/tmp/w; B=$W/build/bin; L=$W/logs; mkdir -p $W $L "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
note() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*" | tee -a $L/progress.txt; }
pack() { tar czf "$OUT/logs_$STAGE.tgz" -C $W logs 2>/dev/null; }

bench_model() {  # name alias path
  local name=$1 alias=$2 model=$3 n
  if [ ! -f $L/bb_$name.done ]; then
    note "batched-bench $name"
    timeout $(( $(left) > 200 ? 200 : $(left) )) $B/llama-batched-bench -m $model -c 20480 -b 2048 -ub 512 -ngl 999 \
      -npp 512 -ntg 128 -npl 1,4,16,32 --output-format jsonl > $L/bb_$name.out 2> $L/bb_$name.log \
      && touch $L/bb_$name.done
    cat $L/bb_$name.out $L/bb_$name.log | grep '^{' | sed "s/^{/{\"bench\": \"batched-bench\", \"model\": \"$name\", /" >> "$OUT/results.jsonl"
  fi
  for n in ${LEVELS:-1 4 16 32}; do
    [ -f $L/srv_${name}_$n.done ] && continue
    [ $(left) -lt 60 ] && { note "no time left for $name at $n"; return 1; }
    note "llama-server $name -np $n"
    local port=$(( 18000 + n ))
    $B/llama-server -m $model -a $alias -np $n -c $(( 4096 * n )) -ngl 999 --host 127.0.0.1 --port $port \
      > $L/srv_${name}_$n.log 2>&1 &
    local pid=$!
    python3 -c "import sys,time,urllib.request as u
for _ in range(240):
    try: u.urlopen('http://127.0.0.1:$port/health', timeout=2); sys.exit(0)
    except Exception: time.sleep(0.5)
sys.exit(1)" || note "llama-server $name -np $n did not come up"
    local decisions=$(( n < 2 ? 2 : 2 * n ))
    timeout $(( $(left) - 20 )) python3 $G/gpu_engines_bench.py replay --stream $G/stream.json \
      --url http://127.0.0.1:$port --in-flight $n --requests $(( 3 * decisions )) --model $alias --warmup 3 \
      --label "$name" --json "$OUT/results.jsonl" && touch $L/srv_${name}_$n.done
    if [ $n = 16 ] && [ $(left) -gt 90 ]; then
      note "llama-server $name -np 16, no response_format"
      timeout $(( $(left) - 20 )) python3 $G/gpu_engines_bench.py replay --stream $G/stream.json \
        --url http://127.0.0.1:$port --in-flight 16 --requests 96 --model $alias --no-schema \
        --label "$name" --json "$OUT/results.jsonl"
    fi
    kill $pid; wait $pid 2>/dev/null
    pack
  done
}

note "stage $STAGE on $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader), $(nproc) cores"
if [ $STAGE = build ]; then
  python3 -m pip install -q --no-deps --no-index --target $W/py $G/gguf-*.whl
  cp $G/smol.part00 $W/
  tar xzf $G/llama.cpp-src.tar.gz -C $W
  LAYERS=${LAYERS:-8}
  (PYTHONPATH=$W/py python3 $G/gpu_mixtral_gguf.py --tokenizer $G/smollm2_tokenizer.json --layers $LAYERS \
     --out $W/mixtral.q8_0.gguf > $L/gen.log 2>&1; echo "gen rc=$?" >> $L/gen.log) &
  GEN=$!
  note "cmake configure"
  cmake -S $W/llama.cpp-stripped -B $W/build -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
    > $L/cmake.log 2>&1 || { note "configure failed"; tail -30 $L/cmake.log; pack; exit 1; }
  note "build"
  cmake --build $W/build --target llama-server llama-batched-bench llama-quantize -j16 > $L/build.log 2>&1 \
    || { note "build failed"; grep -m5 -B2 -A10 "error" $L/build.log; pack; exit 1; }
  note "built"; wait $GEN; cat $L/gen.log
  note "quantize Q8_0 -> Q4_K_M"
  $B/llama-quantize --allow-requantize $W/mixtral.q8_0.gguf $W/mixtral.q4_k_m.gguf Q4_K_M 16 > $L/quantize.log 2>&1 \
    && rm -f $W/mixtral.q8_0.gguf; tail -3 $L/quantize.log; ls -la $W/*.gguf
  pack
  bench_model mixtral mixtral $W/mixtral.q4_k_m.gguf
else
  cat $W/smol.part00 $G/smol.part01 > $W/smollm2.gguf
  sha256sum $W/smollm2.gguf | tee -a $L/progress.txt
  bench_model smollm2 smollm2 $W/smollm2.gguf
  [ -f $W/mixtral.q4_k_m.gguf ] && bench_model mixtral mixtral $W/mixtral.q4_k_m.gguf
fi
note "stage $STAGE done"; pack
python3 - "$OUT/results.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("bench") == "batched-bench":
        print(f"bb {r['model']:8} B={r.get('pl')} S_TG={r.get('speed_tg')} S_PP={r.get('speed_pp')}")
    else:
        print(f"srv {r['label']:8} N={r['in_flight']:2} schema={not r['no_schema']} gen_tok/s={r['generation_tokens_per_s']} dec/h={r['decisions_per_hour']} "
              f"p50={r['call_latency_p50_s']} p95={r['call_latency_p95_s']} err={r['errors']} fin={r['finish_reasons']} mean_out={r['mean_completion_tokens']} mean_in={r['mean_prompt_tokens']}")
EOF
