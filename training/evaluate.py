"""Held-out evaluation of the demo checkpoint with transformers (greedy, no grammar), the real tools executing.

For each held-out record the model gets the conversation up to the last user request, generates, its tool calls
are parsed (the template's XML form), run by the real tools in the record's workspace and fed back, until it
answers without a call (at most ``--max-steps`` assistant turns). A task's calls are right when every assistant
step called the expected tools with the expected arguments (defaults filled in from the schema, numbers compared
as numbers, parallel calls as a multiset) and no extra step called a tool; its final answer is right when it
contains every ``check`` string of the record.

    python -m training.evaluate --model fmoe/demo/model --out bench/results/demo_heldout_transformers.json
"""
from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from fmoe.demo import MODEL_DIR
from training import HELDOUT_PATH, datagen

CALL_RE = re.compile(r"<tool_call>\s*<function=([^>\n]+)>\n?(.*?)</function>\s*</tool_call>", re.S)
PARAM_RE = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)


def parse_calls(text: str) -> tuple[str, list[dict]]:
    """(content before the first call, [{"name", "arguments" (raw strings)}])."""
    calls = [{"name": m.group(1).strip(), "arguments": {p.group(1).strip(): p.group(2)
                                                        for p in PARAM_RE.finditer(m.group(2))}}
             for m in CALL_RE.finditer(text)]
    i = text.find("<tool_call>")
    return (text if i < 0 else text[:i]).strip(), calls


def coerce(value: str, schema: dict):
    t = schema.get("type")
    v = value.strip() if t in ("number", "integer", "boolean") else value
    try:
        if t == "number":
            return float(v)
        if t == "integer":
            return int(v)
        if t == "boolean":
            return v.lower() == "true"
    except ValueError:
        return value
    return value


def normalise(call: dict, schemas: dict) -> tuple[str, str]:
    """A comparable form of a call: defaults filled in, values coerced by the schema's types."""
    name = call["name"]
    if name not in schemas:
        return name, json.dumps(call["arguments"], sort_keys=True)
    props = schemas[name]["function"]["parameters"].get("properties", {})
    args = {k: p["default"] for k, p in props.items() if "default" in p}
    for k, v in call["arguments"].items():
        args[k] = coerce(v, props.get(k, {})) if isinstance(v, str) else v
    for k, p in props.items():
        if p.get("type") == "number" and isinstance(args.get(k), (int, float)):
            args[k] = float(args[k])
    return name, json.dumps(args, sort_keys=True, ensure_ascii=False)


def same_calls(got: list[dict], want: list[dict], schemas: dict) -> bool:
    return Counter(normalise(c, schemas) for c in got) == Counter(normalise(c, schemas) for c in want)


def last_query_prefix(messages: list[dict]) -> list[dict]:
    i = max(k for k, m in enumerate(messages) if m["role"] == "user" and
            not str(m["content"]).startswith("<tool_response>"))
    return [dict(m) for m in messages[:i + 1]]


class Runner:
    def __init__(self, model_dir: Path, device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
        self.device = device
        self.eos = [self.tok.convert_tokens_to_ids("<|im_end|>"), self.tok.convert_tokens_to_ids("<|endoftext|>")]
        self.generated = 0

    @torch.no_grad()
    def step(self, prompt: str, max_new_tokens: int) -> str:
        ids = self.tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(self.device)
        out = self.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.eos,
                                  pad_token_id=self.eos[1])
        new = out[0, ids.shape[1]:]
        self.generated += int(new.numel())
        return self.tok.decode(new, skip_special_tokens=False)


def run_record(runner: Runner, rec: dict, schemas: dict, template: str, max_steps: int, max_new: int) -> dict:
    msgs = last_query_prefix(rec["messages"])
    got_steps: list[list[dict]] = []
    final, transcript = None, []
    with datagen.Executor(rec["workspace"], time_seed=rec.get("time_seed", 0)) as ex:
        for _ in range(max_steps):
            prompt = datagen.render(rec, schemas, template, add_generation_prompt=True, messages=msgs)
            text = runner.step(prompt, max_new)
            transcript.append(text)
            body = text.split("</think>")[-1]
            body = body.replace("<|im_end|>", "").replace("<|endoftext|>", "")
            content, calls = parse_calls(body)
            if not calls:
                final = body.strip()
                msgs.append({"role": "assistant", "content": final})
                break
            got_steps.append(calls)
            msgs.append({"role": "assistant", "content": content, "tool_calls": [
                {"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]})
            for c in calls:
                if c["name"] in ex.tools:
                    args = {k: coerce(v, schemas.get(c["name"], {}).get("function", {}).get("parameters", {})
                                      .get("properties", {}).get(k, {})) for k, v in c["arguments"].items()}
                    result, _ = ex(c["name"], args)
                else:
                    result = f"unknown tool: {c['name']}"
                msgs.append({"role": "tool", "name": c["name"], "content": result})
    want = rec["expected"]
    calls_ok = len(got_steps) == len(want) and all(same_calls(g, w, schemas) for g, w in zip(got_steps, want))
    answer_ok = final is not None and all(ch in final for ch in rec["check"])
    return {"id": rec["id"], "kind": rec["kind"], "calls_ok": calls_ok, "answer_ok": answer_ok,
            "got": got_steps, "want": want, "final": final, "check": rec["check"],
            "transcript": transcript if not (calls_ok and answer_ok) else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description="held-out evaluation of the demo model (transformers, greedy)")
    ap.add_argument("--model", default=str(MODEL_DIR))
    ap.add_argument("--heldout", default=str(HELDOUT_PATH))
    ap.add_argument("--out", default="bench/results/demo_heldout_transformers.json")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    recs = datagen.read_jsonl(a.heldout)
    if a.limit:
        recs = recs[:a.limit]
    schemas = datagen.tool_schemas()
    template = datagen.load_template(Path(a.model) / "chat_template.jinja")
    runner = Runner(Path(a.model))
    t0 = time.time()
    results = []
    for i, rec in enumerate(recs):
        results.append(run_record(runner, rec, schemas, template, a.max_steps, a.max_new_tokens))
        if (i + 1) % 20 == 0:
            n = len(results)
            print(f"{n}/{len(recs)} calls {sum(r['calls_ok'] for r in results) / n:.3f} "
                  f"answers {sum(r['answer_ok'] for r in results) / n:.3f} ({time.time() - t0:.0f}s)", flush=True)
    n = len(results)
    by_kind = defaultdict(lambda: {"n": 0, "calls_ok": 0, "answer_ok": 0})
    for r in results:
        k = by_kind[r["kind"]]
        k["n"] += 1
        k["calls_ok"] += r["calls_ok"]
        k["answer_ok"] += r["answer_ok"]
    summary = {
        "what": "demo model, held-out split, transformers greedy decoding, no grammar, real tools",
        "model": str(a.model), "heldout": str(a.heldout), "n": n,
        "calls_ok": sum(r["calls_ok"] for r in results) / n,
        "answer_ok": sum(r["answer_ok"] for r in results) / n,
        "both_ok": sum(r["calls_ok"] and r["answer_ok"] for r in results) / n,
        "by_kind": dict(by_kind), "generated_tokens": runner.generated, "wall_s": round(time.time() - t0, 1),
        "failures": [r for r in results if not (r["calls_ok"] and r["answer_ok"])],
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}, indent=1))


if __name__ == "__main__":
    main()
