#!/usr/bin/env bash
# Session 7, the last H200 call. Issue 14 first, on a quiet host (CPU only): the TorchQLinear per-call overhead and
# one 2 MB 4-bit matrix per call at 16 threads (bench/device/cpu_call_overhead.py), and `fmoe bench kernels`. Then
# issue 13 on the final code: the CUDA engine tests (TorchQLinear decode and the experts through the CUDA kernel)
# while the 12-layer x 512-expert model is synthesized, the kernel table at default launch settings with the Triton
# peer, (a) top-10 uniform 24 GB-scaled and (c) 60 layers x 64 experts all in VRAM.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/session7_final.sh", timeout_s=480)
set -uo pipefail
DEADLINE=450
. bench/device/setup.sh
{ lscpu | grep -E "Model name|^CPU\(s\)" ; nvidia-smi --query-gpu=name --format=csv,noheader; } >> "$R" 2>&1
say "python3 bench/device/cpu_call_overhead.py --threads 16 8"
CUDA_VISIBLE_DEVICES="" timeout 80 python3 bench/device/cpu_call_overhead.py --threads 16 8 --json "$OUT/cpu_call_overhead.json" \
    --markdown "$OUT/cpu_call_overhead.md" > /tmp/ov.txt 2>&1; echo "[overhead rc=$? at $SECONDS s]" | tee -a "$R"
tail -30 /tmp/ov.txt >> "$R"
say "fmoe bench kernels --threads 16 --bits 4 --quick --json"
CUDA_VISIBLE_DEVICES="" timeout 40 python3 -m fmoe bench kernels --threads 16 --bits 4 --quick --json 2>&1 | tail -1 >> "$R"
echo "[cpu part done at $SECONDS s]" | tee -a "$R"
( python3 -m fmoe synth /tmp/a12 --like qwen3.5-397b-a17b --layers 12 --experts 512 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_a12.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_a12.txt ) &
SYN=$!
say "pytest tests/engine/test_cuda.py tests/bench/test_stream_cuda.py tests/kernels/test_cuda_qmv.py -k 'not idle'"
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/bench/test_stream_cuda.py \
    tests/kernels/test_cuda_qmv.py -k "not idle" 2>&1 | tail -12 | tee -a "$R" | tail -2
say "python3 -m fmoe.bench.cuda_kernels --bits 4 8 2 3"
timeout 60 python3 -m fmoe.bench.cuda_kernels --bits 4 8 2 3 --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; grep -v "^|" /tmp/k.txt | head -40 >> "$R"
wait $SYN; tail -2 /tmp/synth_a12.txt | tee -a "$R"
bench a_top10_uniform_24GB 60 --model-dir /tmp/a12 --mode page-cache --top-k 10 --routing uniform \
    --gpu-memory-budget 24GB --tokens 12 --warmup 4
rm -rf /tmp/a12
if [ "$(left)" -gt 90 ]; then
    say "fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4"
    timeout 70 python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 \
        --no-tokenizer --no-progress --force 2>&1 | tail -1 >> "$R"
    bench c_60x64_vram 50 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router \
        --gpu-memory-budget 40GB --tokens 16 --warmup 4
fi
echo "done at $SECONDS s" | tee -a "$R"
