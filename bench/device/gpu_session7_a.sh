#!/usr/bin/env bash
# Session 7, first H200 call: the CUDA C++ grouped mat-vec (fmoe/kernels/cuda_qmv.cu, built by NVRTC at run time):
# its parity tests, the kernel bench with the launch-configuration sweep (against the Triton kernel and the HBM copy
# bandwidth of the same run), the engine's CUDA tests (decode now calls gate+up in one launch), then the stream
# benches (a) 12 layers x 512 experts top-10 uniform 24 GB-scaled and (c) 60 layers x 64 experts all in VRAM.
#   run(kind="nvidia-h200", carry=["runs/whl_gpu"], command="bash bench/device/gpu_session7_a.sh")
set -uo pipefail
. bench/device/setup.sh
[ -f runs/head/qmv.cpp ] && cp runs/head/qmv.cpp fmoe/kernels/qmv.cpp   # the committed CPU kernel, not a helper's edit in progress
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  python3 -c "from fmoe.kernels import nvrtc; print('nvrtc', nvrtc.nvrtc_version())"; } >> "$R" 2>&1
say "fmoe synth /tmp/a12 --like qwen3.5-397b-a17b --layers 12 --experts 512 --bits 4 (background)"
( python3 -m fmoe synth /tmp/a12 --like qwen3.5-397b-a17b --layers 12 --experts 512 --bits 4 --no-tokenizer \
    --no-progress --force > /tmp/synth_a12.txt 2>&1; echo "synth rc=$?" >> /tmp/synth_a12.txt ) &
SYN=$!
say "pytest tests/kernels/test_cuda_qmv.py"
timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_cuda_qmv.py > /tmp/t.txt 2>&1
rc=$?; tail -40 /tmp/t.txt >> "$R"; tail -3 /tmp/t.txt
if [ $rc -ne 0 ]; then kill $SYN; echo "kernel tests failed: stop" | tee -a "$R"; exit 1; fi
say "python3 -m fmoe.bench.cuda_kernels --sweep --bits 4 8 2"
timeout 200 python3 -m fmoe.bench.cuda_kernels --sweep --bits 4 8 2 --write "$OUT" > /tmp/k.txt 2>&1
echo "[kernels rc=$? at $SECONDS s]" | tee -a "$R"; grep -v "^|" /tmp/k.txt | tail -60 >> "$R"
say "pytest tests/engine/test_cuda.py tests/bench/test_stream_cuda.py tests/kernels/test_triton_qmv.py"
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/bench/test_stream_cuda.py \
    tests/kernels/test_triton_qmv.py 2>&1 | tail -15 | tee -a "$R" | tail -2
wait $SYN; tail -2 /tmp/synth_a12.txt | tee -a "$R"
bench a_top10_uniform_24GB 90 --model-dir /tmp/a12 --mode page-cache --top-k 10 --routing uniform \
    --gpu-memory-budget 24GB --tokens 12 --warmup 4
rm -rf /tmp/a12
say "fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4"
timeout 100 python3 -m fmoe synth /tmp/c60 --like qwen3.5-397b-a17b --layers 60 --experts 64 --bits 4 \
    --no-tokenizer --no-progress --force 2>&1 | tail -1 >> "$R"
bench c_60x64_vram 90 --model-dir /tmp/c60 --mode page-cache --top-k 10 --routing router --gpu-memory-budget 40GB \
    --tokens 16 --warmup 4
echo "done at $SECONDS s" | tee -a "$R"
