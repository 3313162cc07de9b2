"""Generator speed, by hand (not a test): startup, decode tokens/s, time to first token.

    .venv/bin/python bench/llm_client.py                 # embedded SmolLM2, threads 1 and 2
    .venv/bin/python bench/llm_client.py --threads 1 2 4 --gguf other.gguf
    .venv/bin/python bench/llm_client.py --base-url http://gpu-host:8000/v1 --model clinical-llm

Decode: one request, 128 new tokens (``ignore_eos`` on llama.cpp), client wall clock and, where the
server reports them, llama.cpp's own timings. TTFT: a ~600-token prompt, streamed, prompt cache off.
Median of ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.llm import LLMClient  # noqa: E402

FILLER = ("The patient is a 67-year-old woman with type 2 diabetes, hypertension and chronic kidney "
          "disease stage 3, seen for a routine follow-up; metformin was reduced last spring. ")


def long_prompt(target_tokens: int, salt: int) -> list[dict[str, str]]:
    # ~44 tokens per filler sentence with the SmolLM2 tokenizer; the salt defeats prompt caching
    text = f"Note {salt}. " + FILLER * max(1, target_tokens // 44)
    return [{"role": "system", "content": "You are a clinical assistant. Answer briefly."},
            {"role": "user", "content": text + "\nSummarise the note in one sentence."}]


def bench_client(client: LLMClient, repeat: int, llama: bool) -> dict[str, float]:
    client.chat([{"role": "user", "content": "warm up"}], max_tokens=4)
    extra = {"ignore_eos": True, "cache_prompt": False} if llama else None
    decode_wall, decode_srv, n_tok = [], [], 0
    for i in range(repeat):
        r = client.complete([{"role": "user", "content": f"Write a long story about a hospital, take {i}."}],
                            max_tokens=128, temperature=0.7, seed=i, extra_body=extra)
        n_tok = int(r.usage.get("completion_tokens") or 0)
        decode_wall.append(n_tok / r.elapsed_s if r.elapsed_s else 0.0)
        if r.timings.get("predicted_per_second"):
            decode_srv.append(float(r.timings["predicted_per_second"]))
    ttft, prompt_tokens, prompt_tps = [], 0, []
    for i in range(repeat):
        msgs = long_prompt(600, salt=1000 + i)
        r = client.complete(msgs, max_tokens=1, extra_body={"cache_prompt": False} if llama else None)
        prompt_tokens = int(r.usage.get("prompt_tokens") or 0)
        if r.timings.get("prompt_per_second"):
            prompt_tps.append(float(r.timings["prompt_per_second"]))
        t0 = time.perf_counter()
        stream = client.stream(long_prompt(600, salt=2000 + i), max_tokens=8,
                               extra_body={"cache_prompt": False} if llama else None)
        next(iter(stream))
        ttft.append(time.perf_counter() - t0)
        stream.close()
    out = {"decode_tok_s_wall": statistics.median(decode_wall), "decode_tokens": n_tok,
           "ttft_s": statistics.median(ttft), "prompt_tokens": prompt_tokens}
    if decode_srv:
        out["decode_tok_s_server"] = statistics.median(decode_srv)
    if prompt_tps:
        out["prompt_tok_s_server"] = statistics.median(prompt_tps)
    return out


def show(name: str, row: dict[str, float]) -> None:
    parts = [f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
    print(f"{name:<40} " + "  ".join(parts), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--base-url", default="", help="bench this OpenAI-compatible endpoint instead")
    ap.add_argument("--model", default="clinical-llm")
    ap.add_argument("--api-key", default="EMPTY")
    args = ap.parse_args()

    if args.base_url:
        client = LLMClient(args.base_url, args.model, args.api_key, timeout_s=300, max_retries=0)
        show(client.describe(), bench_client(client, args.repeat, llama=False))
        return

    t0 = time.perf_counter()
    import xllamacpp  # noqa: F401
    print(f"import xllamacpp: {time.perf_counter() - t0:.3f} s", flush=True)
    from rag.local_llm import EmbeddedLLMServer

    for threads in args.threads:
        server = EmbeddedLLMServer(args.gguf, threads=threads, ctx=args.ctx)
        t0 = time.perf_counter()
        server.start()
        startup = time.perf_counter() - t0
        try:
            client = server.client(timeout_s=300, max_retries=0)
            row = {"startup_s": startup, **bench_client(client, args.repeat, llama=True)}
            show(server.label, row)
            client.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
