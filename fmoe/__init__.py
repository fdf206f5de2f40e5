"""fmoe: stream Mixture-of-Experts models from SSD; grammar-constrained tool-calling agents.

    import fmoe

    model, tok = fmoe.load()                                   # the embedded demo model (or a model directory)
    print(fmoe.generate(model, tok, "Hello", max_tokens=16))
    for r in fmoe.stream_generate(model, tok, "What is 2+2?", chat=True):
        print(r.text, end="")

    @fmoe.tool
    def add(a: int, b: int) -> int:
        'Add two integers.'
        return a + b

    agent = fmoe.Agent(model, tok, [add])
    print(agent.run("What is 2 + 3?").answer)

    fmoe.convert("~/models/Qwen3.5-397B-A17B", "~/models/q397-stream", bits=4)   # HF/mlx-lm -> streaming layout

Everything else lives in the subpackages: engine (model, generation, loader), storage (checkpoints, streaming
layout, convert, synth), kernels, structured (grammar, call formats), agent, tools, eval, cli, bench.
"""
import os as _os

# torch's OpenMP runtime and the native kernels' (fmoe/kernels/qmv.cpp) each keep a thread pool; with the default
# active wait policy their idle threads spin against each other on a 2-core machine and every op slows down by 10x
# or more (measured: demo-model prefill 16.1 s -> 1.2 s, decode 2.2 -> 16.7 tok/s). Must be set before torch loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# name -> (module, attribute), imported on first use so that `import fmoe` stays light
_API = {
    "load": ("fmoe.engine.loader", "load"),
    "ModelOptions": ("fmoe.engine.loader", "ModelOptions"),
    "generate": ("fmoe.engine.generate", "generate"),
    "stream_generate": ("fmoe.engine.generate", "stream_generate"),
    "Sampling": ("fmoe.engine.generate", "Sampling"),
    "Agent": ("fmoe.agent.loop", "Agent"),
    "tool": ("fmoe.tools.decorator", "tool"),
    "convert": ("fmoe.storage.convert", "convert"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fmoe' has no attribute {name!r}")
