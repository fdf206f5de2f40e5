#!/usr/bin/env bash
# /tmp/wt_old, /tmp/wt_new: copies of fmoe/ with the committed (saved at /tmp/qmv_orig.cpp before editing) and the
# current qmv.cpp; both build into their own kernel cache (FMOE_CACHE_DIR) at first use.
cd "$(dirname "$0")/../../.."
for v in old new; do rm -rf /tmp/wt_$v; mkdir -p /tmp/wt_$v; cp -r fmoe /tmp/wt_$v/; find /tmp/wt_$v -name __pycache__ -prune -exec rm -rf {} +; done
cp /tmp/qmv_orig.cpp /tmp/wt_old/fmoe/kernels/qmv.cpp
md5sum /tmp/wt_old/fmoe/kernels/qmv.cpp /tmp/wt_new/fmoe/kernels/qmv.cpp fmoe/kernels/qmv.cpp
