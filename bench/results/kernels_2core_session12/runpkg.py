# Run `fmoe ARGS` from a copy of the fmoe package at $FMOE_PKG_ROOT (/tmp/wt_old: the committed qmv.cpp,
# /tmp/wt_new: this session's), so that old and new go through the same runner (session 10's oldpy.py, generalized).
import os, sys, runpy
root = os.environ["FMOE_PKG_ROOT"]
sys.meta_path = [f for f in sys.meta_path if '__editable__' not in getattr(type(f), '__module__', '') and 'editable' not in repr(f).lower()]
sys.path.insert(0, root)
import fmoe
assert fmoe.__file__.startswith(root), fmoe.__file__
sys.argv = ['fmoe'] + sys.argv[1:]
runpy.run_module('fmoe', run_name='__main__')
