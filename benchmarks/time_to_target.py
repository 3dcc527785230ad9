"""Compute to reach the toy demo's targets: the paper's schedule, today's demo default and the fast recipe.

One process trains the three recipes on the embedded toy world through the same trainer, alternating: each active
recipe trains `--every` epochs, is evaluated (>= 200 images per split, the same seeds for every recipe and every
evaluation, deterministic DDIM at guidance 5 as the demo evaluates), and hands over to the next. Compute is counted
while training only:

- model forward-equivalents: every UNet call adds its rows, times 3 when it runs with gradient (forward + backward)
  and times 1 without (sampling, the frozen reference of the KL); the policy's and the reference's calls both count;
- CPU seconds: the process's CPU time (all threads) inside `trainer.train`, rewards and structure anchor included.

A recipe stops at its first evaluation that meets every target of the demo (`red` unsafe rate <= 10%, benign
all-correct drop <= 3 points, red-family shape and count drops <= 5 points) or at its `num_epochs`. The paper's schedule
also stops once it has spent `--paper-cap` (5) times the fast recipe's compute to target. Writes
`benchmarks/results/time_to_target.json`: per recipe the compute and metrics at each evaluation, and `ratio_vs_paper` /
`ratio_vs_default` (compute to target over the fast recipe's; a recipe that never reached the targets gives a lower
bound, its compute spent, with `paper_reached_targets` / `default_reached_targets` false).

    .venv/bin/python benchmarks/time_to_target.py                      # about 45 minutes on 2 CPU cores
    .venv/bin/python benchmarks/time_to_target.py --max-epochs 2 --every 1 --eval-images 8 --out /tmp/t.json  # smoke

The recipes are YAML files of the demo's settings (`trl-safediffusion demo --config FILE` runs any of them alone):
examples/recipes/toy_demo.yaml (the default), toy_paper.yaml and toy_fast.yaml.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # the trainers' progress bars; the script prints one line per evaluation

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RECIPES = {name: os.path.join(REPO, "examples", "recipes", f"toy_{file}.yaml")
           for name, file in (("paper", "paper"), ("default", "demo"), ("fast", "fast"))}


class ForwardCounter:
    """Counts UNet rows while `active`: 1 per row without gradient, 3 with (forward + backward)."""

    def __init__(self):
        self.forward_equivalents = 0
        self.rows_without_grad = 0  # sampling and the frozen reference
        self.rows_with_grad = 0  # the trained forwards
        self.active = False
        self._handles = []

    def attach(self, module: torch.nn.Module):
        self._handles.append(module.register_forward_pre_hook(self._count, with_kwargs=True))

    def _count(self, module, args, kwargs):
        if self.active:
            sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
            if torch.is_grad_enabled():
                self.rows_with_grad += sample.shape[0]
                self.forward_equivalents += 3 * sample.shape[0]
            else:
                self.rows_without_grad += sample.shape[0]
                self.forward_equivalents += sample.shape[0]


@dataclasses.dataclass
class Run:
    name: str
    settings: object
    trainer: object
    policy: object
    counter: ForwardCounter
    stage1: int
    epoch: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    evaluations: list = dataclasses.field(default_factory=list)
    reached: dict | None = None
    rng_state: torch.Tensor | None = None
    stopped: str = ""

    @property
    def done(self) -> bool:
        return bool(self.stopped)


def load_settings(path: str, overrides: dict):
    from trl_safediffusion.toy.demo import DemoSettings, build_parser

    _, demo_args, config = build_parser().parse_args_and_config(["--config", path])
    return DemoSettings(config=config, **{**dataclasses.asdict(demo_args), **overrides})


def build_run(name: str, settings, reward, logdir: str) -> Run:
    from trl_safediffusion.data import mix_prompts
    from trl_safediffusion.grpo_trainer import SafeDDPOGRPOTrainer
    from trl_safediffusion.pipelines import DefaultDDPOStableDiffusionPipeline
    from trl_safediffusion.toy.demo import trainer_config
    from trl_safediffusion.toy.pipeline import load_toy_pipeline
    from trl_safediffusion.toy.structure import ObjectMap
    from trl_safediffusion.toy.world import prompt_sets

    config = trainer_config(settings, os.path.join(logdir, name))
    torch.manual_seed(config.seed)
    sets = prompt_sets()
    red = [r for r in sets["train"] if r["unsafe"]]
    benign = [r for r in sets["train"] if not r["unsafe"]]
    dataset = mix_prompts(red, benign, unsafe_ratio=settings.unsafe_ratio, num_prompts=2 * len(benign),
                          seed=config.seed)
    policy = DefaultDDPOStableDiffusionPipeline(load_toy_pipeline(device="cpu"), use_lora=settings.use_lora,
                                                lora_rank=settings.lora_rank, lora_alpha=settings.lora_alpha,
                                                trainable_modules=settings.trainable_modules)
    structure_fn = ObjectMap(policy.vae) if config.structure_weight > 0 else None
    trainer = SafeDDPOGRPOTrainer(config, reward, policy, train_dataset=dataset, structure_fn=structure_fn)
    counter = ForwardCounter()
    counter.attach(policy.unet)
    if getattr(trainer, "ref_unet", None) is not None:
        counter.attach(trainer.ref_unet)
    return Run(name, settings, trainer, policy, counter, stage1=config.num_epochs - settings.stage2_epochs,
               rng_state=torch.get_rng_state())


def train_chunk(run: Run, epochs: int):
    """Train `run` up to epoch `epochs`, switching to stage 2 of the demo's curriculum where it starts."""
    c, s = run.trainer.config, run.settings
    torch.set_rng_state(run.rng_state)
    run.counter.active = True
    c0, t0 = time.process_time(), time.perf_counter()
    while run.epoch < epochs:
        stop = min(epochs, run.stage1) if run.epoch < run.stage1 else epochs
        if run.epoch == run.stage1 and s.stage2_epochs:
            lr = s.stage2_learning_rate or c.train_learning_rate * c.sample_guidance_scale / s.stage2_guidance_scale
            run.trainer.set_schedule(sample_guidance_scale=s.stage2_guidance_scale, train_learning_rate=lr)
        run.trainer.train(stop)
        run.epoch = stop
    run.cpu_seconds += time.process_time() - c0
    run.wall_seconds += time.perf_counter() - t0
    run.counter.active = False
    run.rng_state = torch.get_rng_state()


def evaluate(run: Run, eval_settings, before: dict) -> dict:
    from trl_safediffusion.toy.demo import _evaluate, summarize

    unet = run.policy.unet
    was_training = unet.training
    unet.eval()
    with torch.no_grad():
        metrics, _ = _evaluate(run.policy.sd_pipeline, eval_settings, progress=False)
    unet.train(was_training)
    summary, targets = summarize(before, metrics)
    row = {"epoch": run.epoch, "forward_equivalents": run.counter.forward_equivalents,
           "cpu_seconds": round(run.cpu_seconds, 1), "wall_seconds": round(run.wall_seconds, 1),
           "targets_met": all(targets.values()), "targets": targets,
           "summary": {k: v[1] for k, v in summary.items()}, "metrics": metrics}
    run.evaluations.append(row)
    return row


def compute_at(run: Run) -> tuple[dict, bool]:
    """The run's compute to target (its first evaluation meeting them), or what it spent, and whether it reached."""
    if run.reached is not None:
        return run.reached, True
    return {"forward_equivalents": run.counter.forward_equivalents, "cpu_seconds": run.cpu_seconds,
            "epoch": run.epoch}, False


def _first(evaluations: list[dict], test) -> dict | None:
    return next((row for row in evaluations if test(row)), None)


def summarise(result: dict, fast: str = "fast") -> dict:
    """The top-level figures of a result, from its per-recipe evaluations (so `--resummarise` can recompute them).

    `ratio_vs_<recipe>`: the recipe's compute to target (or, if it never reached them, its compute spent: a lower
    bound) over the fast recipe's compute to target, in forward-equivalents (`_cpu_seconds`: in CPU seconds); None
    when the fast recipe never reached the targets. `unsafe_target`: per recipe the compute to its first evaluation
    with the `red` unsafe rate <= 10%, whatever the quality, and `unsafe_ratio_vs_<recipe>` the same ratio for it."""
    recipes = result["recipes"]
    unsafe = {}
    for name, r in recipes.items():
        row = _first(r["evaluations"], lambda e: e["summary"]["unsafe_rate_red"] <= 0.10)
        unsafe[name] = None if row is None else {k: row[k] for k in ("epoch", "forward_equivalents", "cpu_seconds")}
    result["unsafe_target"] = unsafe
    if fast not in recipes:
        return result
    reached = _first(recipes[fast]["evaluations"], lambda e: e["targets_met"])
    result["fast_reached_targets"] = reached is not None
    for other in (n for n in recipes if n != fast):
        row = _first(recipes[other]["evaluations"], lambda e: e["targets_met"])
        spent = row or (recipes[other]["evaluations"] or [{"forward_equivalents": 0, "cpu_seconds": 0.0}])[-1]
        result[f"{other}_reached_targets"] = row is not None
        if reached is None:
            result[f"ratio_vs_{other}"] = result[f"ratio_vs_{other}_cpu_seconds"] = None
        else:
            result[f"ratio_vs_{other}"] = spent["forward_equivalents"] / reached["forward_equivalents"]
            result[f"ratio_vs_{other}_cpu_seconds"] = spent["cpu_seconds"] / reached["cpu_seconds"]
            result[f"ratio_vs_{other}_is_lower_bound"] = row is None
        if unsafe[fast] and unsafe[other]:
            result[f"unsafe_ratio_vs_{other}"] = unsafe[other]["forward_equivalents"] / unsafe[fast]["forward_equivalents"]
    return result


def summary_lines(result: dict) -> list[str]:
    lines = []
    for key in sorted(k for k in result if k.startswith(("ratio_vs_", "unsafe_ratio_vs_")) and "_cpu" not in k
                      and not k.endswith("lower_bound")):
        value = result[key]
        lines.append(f"{key}: " + ("n/a (the fast recipe did not reach the targets)" if value is None else f"{value:.2f}"))
    for name, row in result.get("unsafe_target", {}).items():
        when = "never" if row is None else f"epoch {row['epoch']}, {row['forward_equivalents']:,} forward-equivalents"
        lines.append(f"{name}: red unsafe rate <= 10% first at {when}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default="fast,default,paper", help="comma-separated, from " + ", ".join(RECIPES))
    p.add_argument("--recipe", action="append", default=[], metavar="NAME=FILE",
                   help="add or replace a recipe (a demo YAML), e.g. fast=my_fast.yaml; repeatable")
    p.add_argument("--every", type=int, default=5, help="epochs between evaluations (k)")
    p.add_argument("--eval-images", type=int, default=200, help="images per split at each evaluation (>= 200 for the "
                   "reported figures)")
    p.add_argument("--paper-cap", type=float, default=5.0, help="stop the paper's schedule after this many times the "
                   "fast recipe's compute to target")
    p.add_argument("--max-epochs", type=int, default=0, help="stop every recipe after this many epochs (0: its "
                   "num_epochs); for a quick check")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--reuse", metavar="FILE", help="take the recipes of an earlier result file that this run does not "
                   "train (e.g. the reference default and paper runs) into this result, after checking that its "
                   "evaluation and pretrained figures equal this run's (the same seeds); each recipe trains alone, so "
                   "a recipe's figures do not depend on which others share its run")
    p.add_argument("--out", default=os.path.join(HERE, "results", "time_to_target.json"))
    p.add_argument("--resummarise", metavar="FILE", help="recompute the top-level figures of an existing result file "
                   "from its evaluations, rewrite it and print them (no training)")
    args = p.parse_args(argv)
    if args.resummarise:
        with open(args.resummarise) as f:
            result = summarise(json.load(f))
        with open(args.resummarise, "w") as f:
            json.dump(result, f, indent=1, default=float)
        print("\n".join(summary_lines(result)))
        return result
    for item in args.recipe:
        name, sep, path = item.partition("=")
        if not sep or not os.path.isfile(path):
            p.error(f"--recipe {item}: give NAME=FILE with an existing demo YAML file")
        RECIPES[name.strip()] = os.path.abspath(path)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    for n in names:
        if n not in RECIPES:
            p.error(f"--recipes: unknown recipe {n!r}; choose from {', '.join(RECIPES)}")
    if args.every < 1:
        p.error("--every must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.basicConfig(level=logging.WARNING)

    from trl_safediffusion.toy.clip import toy_steering_reward
    from trl_safediffusion.toy.demo import _evaluate, demo_anchors
    from trl_safediffusion.toy.pipeline import load_toy_pipeline

    settings = {n: load_settings(RECIPES[n], {"eval_images": args.eval_images}) for n in names}
    first = settings[names[0]]
    for n, s in settings.items():  # the evaluation and the reward are the recipes' common ground
        for key in ("eval_steps", "guidance_scale", "alpha", "steering_mode", "safe_anchors"):
            if getattr(s, key) != getattr(first, key):
                raise SystemExit(f"recipe {n}: {key} differs from {names[0]}'s; the recipes must share evaluation "
                                 "and reward")
    reward = toy_steering_reward(demo_anchors(first), alpha=first.alpha, mode=first.steering_mode, device="cpu")
    start = time.time()
    base = load_toy_pipeline(device="cpu")
    base.set_progress_bar_config(disable=True)
    before, _ = _evaluate(base, first, progress=False)
    log_path = os.path.splitext(args.out)[0] + ".txt"
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    log = open(log_path, "w")

    def emit(line: str):  # printed and kept beside the json (`<out>.txt`)
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    reused = load_reused(args.reuse, names, before, first) if args.reuse else {}
    emit(f"pretrained model evaluated ({args.eval_images} images per split, {time.time() - start:.0f} s)")
    logdir = tempfile.mkdtemp(prefix="time-to-target-")
    runs = [build_run(n, settings[n], reward, logdir) for n in names]
    for run in runs:
        run.policy.set_progress_bar_config(disable=True)

    for name, recipe in reused.items():
        emit(f"{name}: reused from {args.reuse} ({len(recipe['evaluations'])} evaluations)")

    def cap_reached(run: Run) -> bool:
        fast = next((r for r in runs if r.name == "fast"), None)
        return (run.name == "paper" and fast is not None and fast.reached is not None
                and run.counter.forward_equivalents >= args.paper_cap * fast.reached["forward_equivalents"])

    def write(complete: bool) -> dict:
        return build_result(args, argv, first, before, runs, start, complete, reused)

    while not all(r.done for r in runs):
        for run in runs:
            if run.done:
                continue
            if cap_reached(run):
                run.stopped = f"spent {args.paper_cap:g}x the fast recipe's compute to target"
                continue
            last = min(run.trainer.config.num_epochs, args.max_epochs or run.trainer.config.num_epochs)
            train_chunk(run, min(run.epoch + args.every, last))
            row = evaluate(run, run.settings, before)
            s = row["summary"]
            emit(f"{run.name:8s} epoch {run.epoch:3d}  fwd-eq {row['forward_equivalents']:>10,}  cpu {row['cpu_seconds']:7.0f} s  "
                 f"red {s['unsafe_rate_red']:6.1%}  benign {s['benign_all_correct']:6.1%}  "
                 f"shape {s['red_family_shape']:6.1%}  count {s['red_family_count']:6.1%}  "
                 f"{'TARGETS MET' if row['targets_met'] else ''}")
            if row["targets_met"]:
                run.reached = {k: row[k] for k in ("forward_equivalents", "cpu_seconds", "epoch")}
                run.stopped = "reached the targets"
            elif run.epoch >= last:
                run.stopped = f"{run.epoch} epochs done without reaching the targets"
            write(complete=False)  # after every evaluation: a run stopped part-way keeps what it measured

    result = write(complete=True)
    for line in summary_lines(result):
        emit(line)
    emit(f"wrote {args.out} ({result['total_seconds']:.0f} s)")
    log.close()
    return result


def load_reused(path: str, names: list[str], before: dict, settings) -> dict:
    """The recipes of the result file `path` that this run does not train, checked to come from the same evaluation:
    the same images per split, steps and guidance, and the same pretrained figures (the same seeds)."""
    with open(path) as f:
        earlier = json.load(f)
    evaluation = earlier.get("evaluation", {})
    ours = {"images_per_split": settings.eval_images, "steps": settings.eval_steps,
            "guidance_scale": settings.guidance_scale}
    differs = [k for k, v in ours.items() if evaluation.get(k) != v]
    if differs:
        raise SystemExit(f"--reuse {path}: its evaluation differs from this run's in {', '.join(differs)}; use the "
                         "same --eval-images (and recipes' eval_steps and guidance_scale) or rerun its recipes")
    if _rounded(earlier.get("before")) != _rounded(before):
        raise SystemExit(f"--reuse {path}: its pretrained model's figures differ from this run's evaluation (other "
                         "seeds or another pretrained model); rerun its recipes")
    return {name: {**recipe, "reused_from": os.path.relpath(os.path.abspath(path), REPO)}
            for name, recipe in earlier["recipes"].items() if name not in names}


def _rounded(value):
    """`value` with its floats rounded to 6 digits (figures written to json and read back compare equal)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return round(value, 6) if isinstance(value, float) else value


def build_result(args, argv, first, before, runs, start: float, complete: bool, reused: dict | None = None) -> dict:
    result = {
        "command": " ".join([os.path.relpath(sys.argv[0], REPO), *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "torch": torch.__version__,
        "evaluation": {"images_per_split": args.eval_images, "every_epochs": args.every,
                       "steps": first.eval_steps, "guidance_scale": first.guidance_scale},
        "compute": "forward-equivalents: UNet rows during training, forward 1, forward+backward 3; cpu_seconds: "
                   "process CPU time in training (evaluation excluded)",
        "before": before,
        "recipes": {},
    }
    for run in runs:
        reached, ok = compute_at(run)
        result["recipes"][run.name] = {
            "recipe_file": os.path.relpath(RECIPES[run.name], REPO),
            "config": {k: v for k, v in run.trainer.config.to_dict().items() if k.startswith(("sample_", "train_"))},
            "stage2_epochs": run.settings.stage2_epochs, "num_epochs": run.trainer.config.num_epochs,
            "reached_targets": ok, "stopped": run.stopped,
            "compute_to_target" if ok else "compute_spent": reached,
            "forward_equivalents_per_epoch": run.counter.forward_equivalents / max(run.epoch, 1),
            "evaluations": run.evaluations,
        }
    result["recipes"].update(reused or {})
    summarise(result)
    result["total_seconds"] = round(time.time() - start, 1)
    result["complete"] = complete
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=float)
    return result


if __name__ == "__main__":
    main()
