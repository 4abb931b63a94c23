"""Model merging: throughput and peak resident memory of the workbench's merge against mergekit's ``merge_state_dicts`` and a plain copy.

Two checkpoint sets, each a base and T = 8 fine-tuned copies (τ = 0.01 · N(0, 1) per entry), float32:

- ``minilm``: the real all-MiniLM-L6-v2 weights (22.7M parameters, 91 MB) as the base, all in memory;
  the copy moves every task tensor into one buffer allocated beforehand.
- ``large``: synthetic checkpoints of 16 tensors of 4096 × 8192 (2.1 GB each; ``--large-shape``) as safetensors files on
  disk (made once in ``--large-dir``); the workbench streams them and writes the merged file;
  mergekit gets the files memory-mapped (its API takes state dicts, and it keeps its 2.1 GB result in
  memory rather than writing it); the copy reads every task file's bytes into one reused buffer. When
  the process may write ``/proc/sys/vm/drop_caches`` the page cache is dropped before every large-set
  measurement, so that every reader starts from the disk.
- ``large_folder``: the same checkpoints as sharded model folders (``config.json``, shards of a third of its bytes or less and their index), made
  once beside them, merged by the workbench into a model folder: a folder must cost no more per byte than a file. The
  copy reads every shard's bytes; mergekit is not run on it (its API takes state dicts).

Methods (:data:`METHODS`): task arithmetic (λ = 0.3), TIES trimmed per tensor (density 0.2, disjoint mean; mergekit's
``ties``) and DARE (drop 0.5; mergekit's ``dare_linear`` at density 0.5), streamed by the generalised core; Breadcrumbs
and its TIES form (density 0.9, γ = 0.01), DELLA and DELLA-linear (density 0.5, ε = 0.15), SCE (select_topk 0.5),
SLERP (one model, t = 0.4), NuSLERP (two), Model Stock and the Karcher mean, tensor-wise rules. Before timing, every
method but DARE and DELLA is checked against mergekit on the MiniLM set: the table's
``differing`` column counts the entries that differ by more than 1e-5 (TIES: where magnitudes tie at the k-th place, the
workbench keeps all of them and mergekit an arbitrary subset); DARE's and DELLA's random masks differ between the
libraries, so they are timed only (the tests check DELLA against mergekit given the same draws). The copy reads the bytes of as many task models as the method merges.

Every measurement runs in a fresh process, which imports the library it times before the clock starts and reports
its seconds and its peak resident memory (``VmHWM``, file pages that a memory map brought in included) and its
resident memory just before the merge. MiniLM rows are medians over rounds in which the three take turns; large rows are one run each
(mergekit's TIES on the large set would take about 10 minutes and runs only with ``--large-mergekit-ties``).
Throughput = bytes of the T task checkpoints / seconds. Ratio = mergekit seconds / workbench seconds; on the large sets
``vs copy`` = copy seconds / workbench seconds (1 = as fast as reading the files), and the workbench's rows give the peak
the dry run expects (:func:`workbench.merge.config.dry_run`) beside the measured extra resident memory.

Run: ``python benchmarks/bench_merge.py [--quick] [--sets minilm large large_folder] [--methods ...] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

N_TASKS = 8
LARGE_SHAPE, LARGE_TENSORS = (4096, 8192), 16
FOLDER_SHARDS = 3
METHODS = {
    # name: (the workbench's registered merge and its options, mergekit method, mergekit parameters, task models merged)
    "task_arithmetic": (("task_arithmetic", {}), "task_arithmetic", {"weight": 1.0, "lambda": 0.3}, N_TASKS),
    "ties": (("ties", {"trim": "tensor"}), "ties", {"weight": 1.0, "density": 0.2}, N_TASKS),
    "dare": (("dare", {"lam": 1.0}), "dare_linear", {"weight": 1.0, "density": 0.5}, N_TASKS),
    "breadcrumbs": (("breadcrumbs", {"density": 0.9, "gamma": 0.01}), "breadcrumbs", {"weight": 1.0, "density": 0.9, "gamma": 0.01}, N_TASKS),
    "breadcrumbs_ties": (("breadcrumbs_ties", {"density": 0.9, "gamma": 0.01}), "breadcrumbs_ties", {"weight": 1.0, "density": 0.9, "gamma": 0.01}, N_TASKS),
    "della": (("della", {"density": 0.5, "epsilon": 0.15}), "della", {"weight": 1.0, "density": 0.5, "epsilon": 0.15}, N_TASKS),
    "della_linear": (("della_linear", {"density": 0.5, "epsilon": 0.15}), "della_linear", {"weight": 1.0, "density": 0.5, "epsilon": 0.15}, N_TASKS),
    "sce": (("sce", {"select_topk": 0.5}), "sce", {"select_topk": 0.5}, N_TASKS),
    "slerp": (("slerp", {"t": 0.4}), "slerp", {"t": 0.4}, 1),
    "nuslerp": (("nuslerp", {}), "nuslerp", {"weight": 1.0}, 2),
    "model_stock": (("model_stock", {}), "model_stock", {}, N_TASKS),
    "karcher": (("karcher", {}), "karcher", {}, N_TASKS),
}
ORACLE_CHECKED = [m for m in METHODS if m not in ("dare", "della", "della_linear")]  # their random masks differ between the libraries


def workbench_merge(name: str, changes: dict, base, tasks, **kwargs):
    """The registered merge ``name`` streamed by the generalised core (a preset) or the tensor-wise merge (a rule)."""
    from workbench.merge import MERGES, merge_task_vectors, preset_options
    from workbench.merge.tensor_wise import merge_tensor_wise

    target = MERGES[name].target()
    if hasattr(target, "options_of"):
        return merge_task_vectors(base, tasks, preset_options(name, **changes), progress=False, **kwargs)
    return merge_tensor_wise(base, tasks, target.rule, changes, uses_base=target.uses_base, progress=False, **kwargs)


def mergekit_merge(method: str, parameters: dict, base, tasks: dict):
    """mergekit's ``merge_state_dicts`` of ``method``: the Karcher mean over the task models alone, the others around the base."""
    from mergekit.merge_methods.api import merge_state_dicts

    if method == "karcher":
        return merge_state_dicts(list(tasks.values()), method, parameters=parameters)
    return merge_state_dicts({"base": base, **tasks}, method, base="base", parameters=parameters)


# ---- the checkpoint sets ----

def minilm_set() -> tuple[dict, dict]:
    """The MiniLM base state dict and N_TASKS fine-tuned copies, in memory."""
    from workbench.models import minilm_path
    from workbench.weights import open_weights

    checkpoint = open_weights(minilm_path() / "model.safetensors")
    base = {key: checkpoint[key].float() for key in checkpoint.keys() if checkpoint.spec(key)[1].is_floating_point}
    g = torch.Generator().manual_seed(0)
    tasks = {f"t{i}": {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()} for i in range(N_TASKS)}
    return base, tasks


def large_set(folder: Path, shape: tuple[int, int] = LARGE_SHAPE) -> tuple[Path, list[Path]]:
    """The base and N_TASKS task files of the large set in ``folder``, made when missing (about 20 GB at the default shape)."""
    from workbench.weights import TensorPlan, write_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    names = [f"layer{i}.weight" for i in range(LARGE_TENSORS)]
    plans = [TensorPlan(name, shape, torch.float32, "merge") for name in names]

    def tensors(task: int | None):
        for i in range(LARGE_TENSORS):
            base = torch.randn(shape, generator=torch.Generator().manual_seed(i))
            if task is not None:
                base.add_(torch.randn(shape, generator=torch.Generator().manual_seed(1000 * (task + 1) + i)), alpha=0.01)
            yield base

    paths = {None: folder / "base.safetensors", **{t: folder / f"t{t}.safetensors" for t in range(N_TASKS)}}
    for task, path in paths.items():
        if not path.exists():
            print(f"writing {path}", flush=True)
            write_safetensors(path, plans, tensors(task))
    return paths[None], [paths[t] for t in range(N_TASKS)]


def large_folder_set(folder: Path, shape: tuple[int, int] = LARGE_SHAPE) -> tuple[Path, list[Path]]:
    """The large set as sharded model folders in ``folder/folders`` (each file's tensors in shards of at most 1/FOLDER_SHARDS of its bytes, and a
    ``config.json``), made from the files when missing."""
    from workbench.weights import open_weights
    from workbench.weights.model_folder import write_model_folder
    from workbench.weights.state_dicts import plan

    files = large_set(folder, shape)
    template = folder / "folders" / "template"
    template.mkdir(parents=True, exist_ok=True)
    (template / "config.json").write_text(json.dumps({"model_type": "synthetic", "architectures": ["Synthetic"]}))
    folders = []
    for path in [files[0], *files[1]]:
        out = folder / "folders" / path.stem
        if not out.exists():
            print(f"writing {out}", flush=True)
            weights = open_weights(path)
            plans = plan([weights])
            shard = sum(p.nbytes for p in plans) // FOLDER_SHARDS + 1
            write_model_folder(out, plans, (weights[p.name] for p in plans), like=template, max_shard_bytes=shard)
        folders.append(out)
    return folders[0], folders[1:]


def mapped_state_dict(path: Path) -> dict:
    """A safetensors file's tensors as views of a read-only memory map (nothing is read until touched)."""
    from workbench.weights.state_dicts import SafetensorsWeights

    checkpoint = SafetensorsWeights(path)
    with open(path, "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.frombuffer warns that the map is read-only
        return {
            key: torch.frombuffer(mapped, dtype=checkpoint.spec(key)[1], count=checkpoint.numel(key), offset=checkpoint.byte_offset(key)).view(checkpoint.spec(key)[0])
            for key in checkpoint.keys()
        }


# ---- one measurement, in its own process ----

def resident_bytes(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(spec: dict) -> dict:
    """Build the set, run one merge (or copy) and report seconds and memory."""
    (name, changes), mk_method, mk_parameters, n_models = METHODS[spec["method"]]
    if spec["set"] == "minilm":
        base, tasks = minilm_set()
        tasks = dict(list(tasks.items())[:n_models])
        destination = torch.zeros(sum(v.numel() for sd in tasks.values() for v in sd.values()))

        def copy_all():
            start = 0
            for v in (v for sd in tasks.values() for v in sd.values()):
                destination[start : start + v.numel()].copy_(v.reshape(-1))
                start += v.numel()

        calls = {
            "workbench": lambda: workbench_merge(name, changes, base, tasks),
            "mergekit": lambda: mergekit_merge(mk_method, mk_parameters, base, tasks),
            "copy": copy_all,
        }
    else:
        shape = tuple(spec.get("large_shape", LARGE_SHAPE))
        folders = spec["set"] == "large_folder"
        base_path, task_paths = (large_folder_set if folders else large_set)(Path(spec["large_dir"]), shape)
        task_paths = task_paths[:n_models]
        out = Path(spec["large_dir"]) / ("merged" if folders else "merged.safetensors")
        if out.exists() and spec["who"] == "workbench":  # the last workbench merge stays, to be looked at
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        files = [f for p in task_paths for f in (sorted(p.glob("*.safetensors")) if folders else [p])]

        def read_all():
            buffer = bytearray(64 << 20)
            for path in files:
                with open(path, "rb", buffering=0) as file:
                    while file.readinto(buffer):
                        pass

        calls = {
            "workbench": lambda: workbench_merge(name, changes, base_path, {p.stem: p for p in task_paths}, out=out),
            "mergekit": lambda: mergekit_merge(mk_method, mk_parameters, mapped_state_dict(base_path), {p.stem: mapped_state_dict(p) for p in task_paths}),
            "copy": read_all,
        }
    if spec["who"] == "workbench":  # imports are made before the clock starts, for both libraries
        from workbench.merge import MERGES

        MERGES[name].target()
    elif spec["who"] == "mergekit":
        import mergekit.merge_methods.api  # noqa: F401
    before = resident_bytes("VmRSS")
    start = time.perf_counter()
    calls[spec["who"]]()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_before": before, "peak": resident_bytes("VmHWM")}


def mergekit_differences(method: str) -> int:
    """Entries of the MiniLM set's merge where the workbench and mergekit differ by more than 1e-5."""
    from workbench.merge import make_merge

    (name, changes), mk_method, mk_parameters, n_models = METHODS[method]
    base, tasks = minilm_set()
    tasks = dict(list(tasks.items())[:n_models])
    ours = make_merge(name, **changes)(base, tasks).weights
    theirs = mergekit_merge(mk_method, mk_parameters, base, tasks)
    return sum(int(((ours[k] - theirs[k]).abs() > 1e-5).sum()) for k in ours)


def expected_peak(method: str, base, tasks: dict) -> int:
    """The peak the dry run of ``workbench merge`` expects for this merge (:func:`workbench.merge.config.dry_run`)."""
    from workbench.merge import MERGES, preset_options
    from workbench.merge.config import MergePlan, dry_run

    (name, changes), *_ = METHODS[method]
    options = preset_options(name, **changes) if hasattr(MERGES[name].target(), "options_of") else changes
    return dry_run(MergePlan(name, Path(base), {label: Path(p) for label, p in tasks.items()}, options, None, Path(base)))["peak_bytes"]


# ---- the driver ----

def drop_page_cache() -> bool:
    """Drop the page cache when this process may; returns whether it did."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def in_process(spec: dict) -> dict:
    result = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round on the MiniLM set and no large set")
    parser.add_argument("--sets", nargs="+", default=["minilm", "large", "large_folder"], choices=["minilm", "large", "large_folder"])
    parser.add_argument("--large-dir", default=str(Path(tempfile.gettempdir()) / "workbench-bench-merge"))
    parser.add_argument("--large-shape", nargs=2, type=int, default=list(LARGE_SHAPE), metavar=("ROWS", "COLUMNS"), help="each large tensor's shape (default: 4096 8192)")
    parser.add_argument("--large-mergekit-ties", action="store_true", help="also time mergekit's TIES on the large set (about 10 minutes)")
    parser.add_argument("--large-without-mergekit", nargs="+", default=[], choices=list(METHODS), metavar="METHOD",
                        help="methods whose mergekit run is left out on the large sets (its Breadcrumbs takes over 10 minutes)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rounds", type=int, default=3, help="rounds on the MiniLM set (default: 3; 1 with --quick)")
    parser.add_argument("--keep-page-cache", action="store_true", help="do not drop the page cache before the large-set runs")
    parser.add_argument("--json", default="benchmarks/latest_merge.json", help="where the rows are written (default: benchmarks/latest_merge.json)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    sets, methods = (["minilm"] if args.quick else args.sets), args.methods
    rounds = 1 if args.quick else args.rounds
    shape = tuple(args.large_shape)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; T = {N_TASKS}")
    rows = []
    for set_name in sets:
        if set_name == "minilm":
            base, tasks = minilm_set()
            model_bytes = sum(v.numel() * v.element_size() for v in base.values())
            del base, tasks
            differing = {m: mergekit_differences(m) for m in ORACLE_CHECKED if m in methods}
            cold = False
        else:
            base_path, task_paths = (large_folder_set if set_name == "large_folder" else large_set)(Path(args.large_dir), shape)
            model_bytes = sum(f.stat().st_size for f in (task_paths[0].glob("*.safetensors") if task_paths[0].is_dir() else [task_paths[0]]))
            differing, cold = {}, not args.keep_page_cache and drop_page_cache()
        print(f"\n{set_name}: up to {N_TASKS} task checkpoints of {model_bytes / 1e9:.2f} GB" + (" (page cache dropped before each run)" if cold else ""), flush=True)
        header = (f"{'method':16} {'who':10} {'seconds':>8} {'GB/s':>6} {'mergekit/this':>13} {'vs copy':>7} {'peak RSS GB':>11} {'extra GB':>9} "
                  f"{'expected GB':>11} {'peak % of tasks':>15} {'differing':>9}")
        print(header)
        print("-" * len(header))
        for method in methods:
            task_bytes = METHODS[method][3] * model_bytes
            results = {}
            for who in ("workbench", "mergekit", "copy"):
                if set_name != "minilm" and who == "mergekit" and (set_name == "large_folder" or method in args.large_without_mergekit
                                                                    or (method == "ties" and not args.large_mergekit_ties)):
                    continue
                if who == "copy" and method not in ("task_arithmetic", "slerp", "nuslerp"):
                    continue  # the same bytes for every method of as many models
                spec = {"set": set_name, "method": method, "who": who, "large_dir": args.large_dir, "large_shape": shape}
                runs = []
                for _ in range(rounds if set_name == "minilm" else 1):
                    if cold:
                        drop_page_cache()
                    runs.append(in_process(spec))
                results[who] = {
                    "seconds": statistics.median(r["seconds"] for r in runs),
                    "peak": max(r["peak"] for r in runs),
                    "extra": max(r["peak"] - r["rss_before"] for r in runs),
                }
            expected = None
            if set_name != "minilm":
                expected = expected_peak(method, base_path, {p.stem: p for p in task_paths[: METHODS[method][3]]})
            for who, r in results.items():
                ratio = results["mergekit"]["seconds"] / r["seconds"] if "mergekit" in results else float("nan")
                versus_copy = results["copy"]["seconds"] / r["seconds"] if "copy" in results and set_name != "minilm" else float("nan")
                row = dict(set=set_name, method=method, who=who, task_bytes=task_bytes, gbs=task_bytes / r["seconds"] / 1e9,
                           mergekit_over_this=ratio, copy_over_this=versus_copy, differing=differing.get(method) if who == "workbench" else None,
                           expected_peak=expected if who == "workbench" else None, **r)
                rows.append(row)
                shown = "" if row["expected_peak"] is None else f"{row['expected_peak'] / 1e9:.2f}"
                print(
                    f"{method:16} {who:10} {r['seconds']:8.2f} {row['gbs']:6.2f} {ratio:13.2f} {versus_copy:7.2f} {r['peak'] / 1e9:11.2f} {r['extra'] / 1e9:9.2f} "
                    f"{shown:>11} {100 * r['peak'] / task_bytes:14.1f}% {'' if row['differing'] is None else row['differing']:>9}",
                    flush=True,
                )
    with open(args.json, "w") as stream:
        json.dump(rows, stream, indent=1)


if __name__ == "__main__":
    main()
