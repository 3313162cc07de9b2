"""finetune.train under torchrun: the patient-aware sampler shards each epoch over the ranks, the cached
loss gathers the global batch, rank 0 alone writes, and a resumed run picks up where it stopped.

The end-to-end test runs ``torchrun --nproc_per_node 2`` (gloo, CPU) on a tiny BERT and compares it with
one process whose batch is the two ranks' together: with gathered negatives both compute the same loss
over the same global batches and step on the same averaged gradient, so the per-step losses agree to
float rounding (measured: <= 1e-6 relative). The tolerance, rtol 1e-3, is far below what a real
difference makes: without gathering each rank's queries see 4 + 4 candidates instead of 8 + 8 and the
first loss is ~1.97 instead of ~2.65 (-25%); ranks replaying epoch 0's batches after a resume in epoch 1
(what accelerate's wrappers did before finetune.train set the sampler's epoch itself) moved it by 2-5%.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from finetune.distributed import Launch, launch_from_env
from finetune.pairs import Pair, write_pairs
from finetune.train import WORLD_FILE, main, resumable_checkpoint
from finetune.train_sampler import _patient_batches, find_patient_sampler, make_patient_sampler
from rag.config import REPO_ROOT
from tests.doubles import free_port
from tests.tiny_models import DEFAULT_CORPUS, build_tiny_st

PROMPTS = {"query": "query: ", "passage": "passage: "}
DRUGS = ["heparin", "insulin", "metformin", "aspirin", "lasix", "propofol", "vancomycin", "zosyn",
         "atropine", "lithium", "morphine", "fentanyl", "warfarin", "digoxin", "labetalol", "nitro"]


def _pairs(n_patients: int, per_patient: int, tag: str = "") -> list[Pair]:
    return [Pair(query=f"was {DRUGS[(p * per_patient + j) % len(DRUGS)]} given",
                 positive=f"pt started on {DRUGS[(p * per_patient + j) % len(DRUGS)]} drip overnight note {p}-{j}",
                 doc_id=f"{tag}d{p}-{j}", patient_id=f"{tag}p{p}", chunk_id=f"{tag}d{p}-{j}#0000", source="qa")
            for p in range(n_patients) for j in range(per_patient)]


# --------------------------------------------------------------------------------------------
# The sharded sampler (no process group needed: accelerate's own shard deals the batches)


def _rank_batches(groups: list[str], per_rank: int, world: int, epoch: int, drop_last: bool) -> tuple[list, int]:
    """Each rank's batches as the trainer's data loader hands them out (accelerate's BatchSamplerShard)."""
    from accelerate.data_loader import BatchSamplerShard
    from datasets import Dataset

    ds = Dataset.from_dict({"anchor": [str(i) for i in range(len(groups))], "positive": ["x"] * len(groups)})
    sampler = make_patient_sampler(groups, world_size=world)(ds, per_rank, drop_last, None, None, 7)
    sampler.set_epoch(epoch)
    if world == 1:  # accelerate wraps the batch sampler only in a distributed run
        ranks = [list(sampler)]
    else:
        ranks = [list(BatchSamplerShard(sampler, num_processes=world, process_index=r, split_batches=False,
                                        even_batches=False)) for r in range(world)]
    assert all(len(b) == sampler.steps for b in ranks), [len(b) for b in ranks]
    return ranks, sampler.dropped


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_epoch_is_dealt_out_once_with_one_patient_per_global_batch(world: int) -> None:
    # a few large patients, some with two or three pairs, many with one: the tail batches shrink
    groups = ["a"] * 30 + ["b"] * 5 + [f"t{i // 3}" for i in range(12)] + [f"s{i}" for i in range(41)]
    per_rank = 4
    for drop_last in (True, False):  # sentence-transformers sets drop_last in DDP; either way
        epochs = []
        for epoch in (0, 1):
            ranks, dropped = _rank_batches(groups, per_rank, world, epoch, drop_last)
            steps = len(ranks[0])
            assert steps > 0 and all(len(r) == steps for r in ranks)  # equal batch counts: no rank waits
            seen = [i for r in ranks for b in r for i in b]
            assert len(seen) == len(set(seen))  # no pair twice in an epoch, across ranks
            assert len(seen) + dropped == len(groups)
            for k in range(steps):
                slices = [r[k] for r in ranks]
                assert len({len(s) for s in slices}) == 1 and 0 < len(slices[0]) <= per_rank  # all-gather: equal
                patients = Counter(groups[i] for s in slices for i in s)
                assert max(patients.values()) == 1, (k, patients)  # one patient per *global* batch
            epochs.append(ranks)
        assert epochs[0] != epochs[1]  # every epoch has its own batches
    if world == 1:  # unchanged single-process batches (the cpu-demo model was trained on them)
        assert _rank_batches(groups, per_rank, 1, 0, False)[0][0] == _patient_batches(groups, 4, 1, 7, 2)[0]


def test_resume_finds_the_sampler_under_accelerate_wrappers() -> None:
    from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler
    from datasets import Dataset

    ds = Dataset.from_dict({"anchor": list("abcdefgh"), "positive": list("12345678")})
    sampler = make_patient_sampler(list("abcdefgh"), world_size=2)(ds, 2, True, None, None, 0)

    class Loader:  # DataLoaderShard after skip_first_batches: loader -> Skip -> Shard -> ours
        batch_sampler = SkipBatchSampler(BatchSamplerShard(sampler, 2, 1), skip_batches=1)

    assert find_patient_sampler(Loader()) is sampler
    assert find_patient_sampler(None) is None and find_patient_sampler(object()) is None
    with pytest.raises(ValueError, match="world_size"):
        make_patient_sampler(["a"], world_size=0)


def test_launch_and_checkpoints_know_the_world_size(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import torch

    assert launch_from_env({}) == Launch(1, 0, 0) and launch_from_env({}).is_main
    two = launch_from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert two.distributed and not two.is_main and two.local_rank == 1
    with pytest.raises(ValueError, match="inconsistent"):
        launch_from_env({"WORLD_SIZE": "2", "RANK": "2"})

    args = SimpleNamespace(learning_rate=1e-4, per_device_train_batch_size=16, seed=0, weight_decay=0.01)
    for step, world in ((5, None), (10, 2)):  # a checkpoint of before (no world file: 1 process), one of 2 ranks
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        torch.save(args, ckpt / "training_args.bin")
        (ckpt / "trainer_state.json").write_text("{}")
        if world:
            (ckpt / WORLD_FILE).write_text(json.dumps({"world_size": world}))
    assert resumable_checkpoint(tmp_path, args, 2) == tmp_path / "checkpoint-10"
    assert resumable_checkpoint(tmp_path, args) == tmp_path / "checkpoint-5"  # 2 x 16 is not 1 x 16
    assert resumable_checkpoint(tmp_path, args, 4) is None


# --------------------------------------------------------------------------------------------
# torchrun end to end


# Interrupts a training right after it saved checkpoint CRASH_AT (every rank, once all have saved),
# like a preempted job; the same module runs in-process for the single-process reference.
CRASHER = '''
import os
import sys

sys.path.insert(0, {root!r})
import finetune.train as T

_original = T._world_recorder


def crashing_recorder(world_size):
    inner = _original(world_size)

    class Crash(type(inner)):
        def on_save(self, args, state, control, **kwargs):
            super().on_save(args, state, control, **kwargs)
            if state.global_step == int(os.environ.get("CRASH_AT", "0")):
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():
                    dist.barrier()  # every rank's rng state is on disk
                raise RuntimeError("interrupted after checkpoint %d" % state.global_step)

    return Crash()


T._world_recorder = crashing_recorder
if __name__ == "__main__":
    raise SystemExit(T.main())
'''


@pytest.fixture(scope="module")
def ddp_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A dropout-free tiny BERT (dropout masks differ between 1 and 2 processes), pairs, a dev set."""
    root = tmp_path_factory.mktemp("ddp")
    pairs = _pairs(8, 3)  # 8 patients x 3 pairs: 3 full global batches of 8 per epoch, nothing dropped
    base = build_tiny_st(root / "base", corpus=DEFAULT_CORPUS + [p.query + " " + p.positive for p in pairs], dim=32,
                         prompts=PROMPTS)
    config = json.loads((base / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (base / "config.json").write_text(json.dumps(config))
    write_pairs(pairs, root / "pairs.jsonl")
    dev = root / "dev"
    dev.mkdir()
    held_out = _pairs(4, 2, tag="x")
    (dev / "corpus.jsonl").write_text("".join(json.dumps({"doc_id": p.doc_id, "patient_id": p.patient_id,
                                                          "text": p.positive}) + "\n" for p in held_out))
    (dev / "queries.jsonl").write_text("".join(json.dumps({"query_id": f"q{i}", "text": p.query,
                                                           "patient_id": p.patient_id}) + "\n"
                                               for i, p in enumerate(held_out)))
    (dev / "qrels.tsv").write_text("query_id\tdoc_id\tgrade\n" + "".join(f"q{i}\t{p.doc_id}\t1\n"
                                                                         for i, p in enumerate(held_out)))
    (root / "crasher.py").write_text(CRASHER.format(root=str(REPO_ROOT)))
    return {"root": root, "base": base, "pairs": root / "pairs.jsonl", "dev": dev, "crasher": root / "crasher.py"}


def _cli(setup: dict[str, Path], out: Path, batch_size: int) -> list[str]:
    # 6 steps = 2 epochs of 3 batches; dev evaluation and a checkpoint every 2 steps
    return ["--pairs", str(setup["pairs"]), "--base", str(setup["base"]), "--name", out.name, "--out", str(out),
            "--max-steps", "6", "--eval-steps", "2", "--batch-size", str(batch_size), "--mini-batch-size", "4",
            "--max-seq-length", "32", "--learning-rate", "3e-3", "--warmup-ratio", "0", "--seed", "0",
            "--num-negatives", "1", "--dev-dir", str(setup["dev"])]


def _torchrun(setup: dict[str, Path], cli: list[str], crash_at: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CRASH_AT=str(crash_at))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(setup["crasher"]), *cli]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=150)


def _losses(history: list[dict]) -> dict[int, float]:
    return {int(h["step"]): h["loss"] for h in history if "loss" in h}


def test_torchrun_two_ranks_train_like_one_process_and_resume(ddp_setup: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import finetune.train as T

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    root = ddp_setup["root"]

    # one process, global batch 8: interrupted after checkpoint 4, then resumed (steps 5-6)
    monkeypatch.setattr(T, "_world_recorder", T._world_recorder)  # put back after the test
    spec = importlib.util.spec_from_file_location("crasher", ddp_setup["crasher"])
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # installs the crashing recorder
    single = root / "single"
    monkeypatch.setenv("CRASH_AT", "4")
    with pytest.raises(RuntimeError, match="interrupted after checkpoint 4"):
        main(_cli(ddp_setup, single, 8))
    single_ckpt = json.loads((root / ".single.work" / "checkpoint-4" / "trainer_state.json").read_text())
    monkeypatch.setenv("CRASH_AT", "0")
    assert main(_cli(ddp_setup, single, 8)) == 0
    single_result = json.loads((single / "manifest.json").read_text())["result"]

    # two ranks of 4: the same, under torchrun
    ddp = root / "ddp"
    first = _torchrun(ddp_setup, _cli(ddp_setup, ddp, 4), crash_at=4)
    assert first.returncode != 0 and "interrupted after checkpoint 4" in first.stderr + first.stdout, \
        first.stderr[-3000:]
    ckpt = root / ".ddp.work" / "checkpoint-4"
    assert json.loads((ckpt / WORLD_FILE).read_text()) == {"world_size": 2}
    assert {p.name for p in ckpt.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    ddp_ckpt = json.loads((ckpt / "trainer_state.json").read_text())
    second = _torchrun(ddp_setup, _cli(ddp_setup, ddp, 4))
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resuming from" in second.stderr and str(ckpt) in second.stderr
    ddp_result = json.loads((ddp / "manifest.json").read_text())["result"]

    # rank 0 alone wrote: one summary printed, one finished folder, no leftovers, the card says how
    assert second.stdout.count('"pairs_per_s"') == 1
    assert (ddp / "model.safetensors").is_file() and (ddp / "crag_embedder.json").is_file()
    assert not (root / ".ddp.partial").exists() and not (root / ".ddp.work").exists()
    assert ddp_result["world_size"] == 2 and ddp_result["gathered_negatives"] is True
    assert ddp_result["config"]["batch_size"] == 4 and ddp_result["dropped_by_sampler_epoch0"] == 0
    assert "Data-parallel over 2 processes" in (ddp / "README.md").read_text()

    # the same losses, step by step: before the interruption and after the resume (epoch 1, batch 1 on)
    before_single, before_ddp = _losses(single_ckpt["log_history"]), _losses(ddp_ckpt["log_history"])
    after_single, after_ddp = _losses(single_result["loss_history"]), _losses(ddp_result["loss_history"])
    assert sorted(before_ddp) == sorted(before_single) == [1, 2, 3, 4]
    assert sorted(after_ddp) == sorted(after_single) == [5, 6]
    for step in range(1, 7):
        s, d = {**before_single, **after_single}[step], {**before_ddp, **after_ddp}[step]
        assert d == pytest.approx(s, rel=1e-3), (step, s, d)
    assert len(set(before_single.values())) == 4  # the losses move: the comparison is not of constants
