import sys, runpy
sys.meta_path = [f for f in sys.meta_path if '__editable__' not in getattr(type(f), '__module__', '') and 'editable' not in repr(f).lower()]
sys.path.insert(0, '/tmp/wt_old')
import fmoe
assert fmoe.__file__.startswith('/tmp/wt_old'), fmoe.__file__
sys.argv = ['fmoe'] + sys.argv[1:]
runpy.run_module('fmoe', run_name='__main__')
