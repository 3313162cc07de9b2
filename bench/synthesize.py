"""QA synthesis throughput, by hand (not a test): client requests/s and output tokens/s at 1, 2, 4, 8
requests in flight against the embedded llama.cpp server, next to the server's own tokens/s; plus
kept pairs per document and per minute from synthesis manifests.

    .venv/bin/python bench/synthesize.py                                  # SmolLM2, 1 thread
    .venv/bin/python bench/synthesize.py --generator qwen2.5-coder-0.5b --levels 1 2 4
    .venv/bin/python bench/synthesize.py --manifest var/qa/accept30/manifest.json --manifest var/qa/cmp_smollm2/manifest.json
    .venv/bin/python bench/synthesize.py --render bench/out/synthesize.json --manifest ...   # redraw, refresh rows
    .venv/bin/python bench/synthesize.py --only-manifests --manifest var/qa/before/manifest.json \
        --manifest var/qa/after/manifest.json --out bench/out/synthesis_throughput   # kept pairs per CPU-hour

Kept pairs per CPU-hour = kept / (wall hours x llama.cpp threads) over all runs of a manifest: the
measure to compare generation recipes by, since a recipe that keeps few of its questions wastes the
calls that made the others.

Client overhead: with one server slot the server works on one request at a time, so the sum of its
own per-request times (llama.cpp ``timings``: prompt_ms + predicted_ms) is its busy time, and
``overhead = 1 - busy / wall`` is the share of wall time the server sat idle waiting for the client
(HTTP, JSON, scheduling). At 2+ in flight the next request is already queued, so this must be < 5 %.
A second series runs with as many server slots as requests in flight (llama.cpp batches the slots'
decode steps), which is how ``finetune.synthesize`` runs the embedded server.

Every request asks for exactly ``--tokens`` new tokens (``ignore_eos``) on a short clinical prompt with
a per-request salt (no prompt-cache hits). Writes bench/out/synthesize.{json,md,png}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.llm import LLMClient  # noqa: E402
from rag.local_llm import EmbeddedLLMServer  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
NOTE = ("Resp care: pt intubated for airway protection, 7.5 ETT taped 23 at the lip. Suctioned for thick "
        "yellow sputum. On A/C 700x12, FiO2 50 %, PEEP 5. ABG 7.35/42/281. Started ceftriaxone 2 g daily.")


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You write questions a clinician would ask about a note."},
            {"role": "user", "content": f"Note {i}: {NOTE}\nWrite questions about this note."}]


async def _level(client: LLMClient, in_flight: int, n_requests: int, tokens: int) -> dict[str, float]:
    sem = asyncio.Semaphore(in_flight)
    results = []

    async def one(i: int) -> None:
        async with sem:
            r = await client.acomplete(_messages(i), max_tokens=tokens, temperature=0.7, seed=i,
                                       extra_body={"ignore_eos": True, "cache_prompt": False})
            results.append(r)

    await one(-1)  # warm-up (not counted)
    results.clear()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n_requests)))
    wall = time.perf_counter() - t0
    await client.aclose()
    out_tokens = sum(int(r.usage.get("completion_tokens") or 0) for r in results)
    busy_ms = sum(float(r.timings.get("prompt_ms", 0)) + float(r.timings.get("predicted_ms", 0)) for r in results)
    server_tps = [float(r.timings["predicted_per_second"]) for r in results if r.timings.get("predicted_per_second")]
    return {"in_flight": in_flight, "requests": n_requests, "wall_s": round(wall, 2),
            "requests_per_s": round(n_requests / wall, 3), "output_tokens_per_s": round(out_tokens / wall, 2),
            "server_busy_s": round(busy_ms / 1000, 2),
            "idle_share": round(1 - (busy_ms / 1000) / wall, 4),
            "server_decode_tokens_per_s_median": round(statistics.median(server_tps), 2) if server_tps else None}


def run_series(generator: str | None, levels: list[int], tokens: int, per_level: int, threads: int,
               slots_follow: bool) -> dict:
    rows = []
    if not slots_follow:
        with EmbeddedLLMServer(generator, threads=threads, ctx=2048, parallel=1) as server:
            client = server.client(timeout_s=600, max_retries=0)
            label = server.label
            for level in levels:
                rows.append(asyncio.run(_level(client, level, max(per_level, level * 2), tokens)))
                print(f"slots=1 in_flight={level}: {rows[-1]}", flush=True)
    else:
        for level in levels:
            with EmbeddedLLMServer(generator, threads=threads, ctx=2048 * level, parallel=level) as server:
                client = server.client(timeout_s=600, max_retries=0)
                label = server.label
                rows.append(asyncio.run(_level(client, level, max(per_level, level * 2), tokens)))
                print(f"slots={level} in_flight={level}: {rows[-1]}", flush=True)
    return {"label": label, "slots": "= in flight" if slots_follow else 1, "rows": rows}


def synthesis_rows(paths: list[str]) -> list[dict]:
    out = []
    for p in paths:
        m = json.loads(Path(p).read_text(encoding="utf-8"))
        runs = m.get("runs") or [m["this_run"]]
        wall = sum(r.get("wall_s") or 0 for r in runs)
        kept_runs = sum(r.get("kept") or 0 for r in runs)
        threads = int(m.get("parameters", {}).get("llm_threads") or 1)
        t = m["totals"]
        out.append({"manifest": p, "generator": m["generator"].get("label") or m["generator"].get("model"),
                    "documents": t["documents_done"], "candidates": t["candidates"], "kept": t["kept"],
                    "kept_share": t["kept_share"], "kept_per_document": t["kept_per_document"],
                    "wall_s_all_runs": round(wall, 1),
                    "kept_per_minute": round(kept_runs / (wall / 60), 2) if wall else None,
                    "threads": threads, "candidates_per_cpu_hour": round(
                        sum(r.get("candidates") or 0 for r in runs) / (wall * threads / 3600), 1) if wall else None,
                    "kept_per_cpu_hour": round(kept_runs / (wall * threads / 3600), 1) if wall else None,
                    "prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in runs),
                    "completion_tokens": sum(r.get("completion_tokens") or 0 for r in runs),
                    "drop_reasons": t["drop_reasons"]})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", default=None, help="smollm2 (default), qwen2.5-coder-0.5b or a GGUF path")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--per-level", type=int, default=8, help="requests per level (at least 2 x in flight)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-slots-series", action="store_true", help="skip the series with one slot per request")
    ap.add_argument("--manifest", action="append", default=[], help="synthesis manifest(s) for kept pairs/doc, /min")
    ap.add_argument("--out", default=str(OUT / "synthesize"))
    ap.add_argument("--render", default=None, help="only redraw .md/.png from this result JSON")
    ap.add_argument("--only-manifests", action="store_true",
                    help="no server series: only the synthesis manifests' kept pairs per CPU-hour")
    args = ap.parse_args()
    if args.only_manifests:
        rows = synthesis_rows(args.manifest)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"synthesis": rows}, indent=2) + "\n", encoding="utf-8")
        render_synthesis(rows, out)
        return 0
    if args.render:  # redraw; with --manifest, also refresh the synthesis rows (runs finished later)
        result = json.loads(Path(args.render).read_text(encoding="utf-8"))
        if args.manifest:
            result["synthesis"] = synthesis_rows(args.manifest)
            Path(args.render).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        render(result, Path(args.out))
        return 0

    series = [run_series(args.generator, args.levels, args.tokens, args.per_level, args.threads, False)]
    if not args.no_slots_series:
        series.append(run_series(args.generator, args.levels, args.tokens, args.per_level, args.threads, True))
    single = series[0]["rows"][0]
    sat = [r for r in series[0]["rows"] if r["in_flight"] >= 2]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs: contended timings)",
        "generator": series[0]["label"], "tokens_per_request": args.tokens,
        "server_single_request_decode_tokens_per_s": single["server_decode_tokens_per_s_median"],
        "client_overhead_at_saturation": max((r["idle_share"] for r in sat), default=None),
        "series": series, "synthesis": synthesis_rows(args.manifest),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    render(result, out)
    return 0


def synthesis_table(rows: list[dict]) -> list[str]:
    lines = ["| synthesis run | generator | documents | candidates | kept | kept share | kept / document | "
             "kept / minute | threads | candidates / CPU-hour | kept / CPU-hour |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['manifest']} | {r['generator']} | {r['documents']} | {r['candidates']} | {r['kept']} | "
                     f"{r['kept_share']} | {r['kept_per_document']} | {r['kept_per_minute']} | {r.get('threads', '')} | "
                     f"{r.get('candidates_per_cpu_hour', '')} | {r.get('kept_per_cpu_hour', '')} |")
    return lines


def render_synthesis(rows: list[dict], out: Path) -> None:
    """<out>.md (table) and <out>.png (candidates and kept pairs per CPU-hour, one bar pair per run)."""
    lines = synthesis_table(rows)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [r["candidates_per_cpu_hour"] or 0 for r in rows], height=0.4, label="candidates")
    ax.barh([y - 0.2 for y in ys], [r["kept_per_cpu_hour"] or 0 for r in rows], height=0.4, label="kept pairs")
    ax.set_yticks(list(ys), [Path(r["manifest"]).parent.name for r in rows], fontsize=8)
    ax.set_xlabel("per CPU-hour (wall hours x llama.cpp threads)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)


def render(result: dict, out: Path) -> None:
    """bench/out/synthesize.{md,png} from the result (``--render`` redraws them from the JSON)."""
    series = result["series"]
    single = series[0]["rows"][0]
    lines = [f"Generator: {result['generator']}; {result['tokens_per_request']} new tokens per request; "
             f"{result['machine']}.", "",
             "| server slots | in flight | requests/s | output tokens/s (client) | server decode tokens/s (median) | server idle share |",
             "|---|---|---|---|---|---|"]
    for s in series:
        for r in s["rows"]:
            idle = f"{r['idle_share']:.1%}" if s["slots"] == 1 else "n/a (slots overlap)"
            lines.append(f"| {s['slots']} | {r['in_flight']} | {r['requests_per_s']} | {r['output_tokens_per_s']} | "
                         f"{r['server_decode_tokens_per_s_median']} | {idle} |")
    lines += ["", f"Client overhead at saturation (one slot, 2+ in flight; server idle share): "
                  f"{result['client_overhead_at_saturation']:.1%}"]
    if result["synthesis"]:
        lines += ["", *synthesis_table(result["synthesis"])]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in series:
        xs = [r["in_flight"] for r in s["rows"]]
        ax.plot(xs, [r["output_tokens_per_s"] for r in s["rows"]], marker="o", label=f"client, server slots {s['slots']}")
    if single["server_decode_tokens_per_s_median"]:
        ax.axhline(single["server_decode_tokens_per_s_median"], ls="--", color="grey",
                   label="server's own decode tokens/s, 1 request")
    ax.set_xlabel("requests in flight")
    ax.set_ylabel("output tokens/s")
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.set_title(f"{result['generator']}\n(2-core machine shared with other jobs)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
