"""Command line: `trl-safediffusion train | evaluate | demo`.

    trl-safediffusion train --config examples/recipes/safediffusion_r1_sd15.yaml --train_learning_rate 5e-6
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml -m trl_safediffusion.cli train --config ...
    torchrun --nproc_per_node 8 -m trl_safediffusion.cli train --config ...
    trl-safediffusion evaluate --model CompVis/stable-diffusion-v1-4 --prompts i2p --metrics nudenet q16 clip
    trl-safediffusion demo

Every field of `SafeDDPOGRPOConfig` and of the script-level dataclasses (`script_args`) can be set in the YAML file
(flat keys) or as `--field value` / `--field-name value` flags (`--no_field` for a boolean); flags override the file, and the file's
`env:` mapping sets environment variables first, as with `trl.TrlParser`. Unknown keys and bad values are errors that
name the field.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import Any

from .argparsing import TRUE_WORDS, CLIError, SafeDiffusionParser, convert_value, load_yaml_config, suggest
from .script_args import (
    CLIP_BACKENDS,
    FAMILY_OPTIONS,
    METRICS,
    REWARDS,
    DataArguments,
    EvalArguments,
    ModelArguments,
    OutputArguments,
    RewardArguments,
)

__all__ = [
    "CLIError", "DataArguments", "EvalArguments", "ModelArguments", "OutputArguments", "RewardArguments",
    "build_clip_steering_reward", "build_reward", "configure_logging", "convert_value", "load_yaml_config", "main",
    "parse_eval_args", "parse_train_args", "process_state", "run_demo", "run_evaluate", "run_train",
]

logger = logging.getLogger(__name__)

PROG = "trl-safediffusion"


def _train_groups():
    from .grpo_config import SafeDDPOGRPOConfig

    return [
        ("training configuration (SafeDDPOGRPOConfig)", SafeDDPOGRPOConfig),
        ("model", ModelArguments),
        ("data", DataArguments),
        ("reward", RewardArguments),
        ("output", OutputArguments),
    ]


def _eval_groups():
    reward_fields = RewardArguments
    return [("evaluation", EvalArguments), ("CLIP metrics (steering reward)", reward_fields)]


# ----------------------------------------------------------------------------------------------------------------------
# Parsing (`SafeDiffusionParser`: the flags and `--config` YAML of `trl.TrlParser`, with typed values)
# ----------------------------------------------------------------------------------------------------------------------


def _parser(command: str, groups, description: str, exit_on_error: bool = False) -> SafeDiffusionParser:
    """The parser of `command`; with `exit_on_error` (a script's), it is named after the script and a mistake is one
    line `script.py: error: ...` and exit code 2, else `CLIError`."""
    parser = SafeDiffusionParser(
        [cls for _, cls in groups], group_titles={cls: title for title, cls in groups}, raise_errors=not exit_on_error,
        prog=None if exit_on_error else f"{PROG} {command}", description=description,
        usage="%(prog)s [--config FILE.yaml] [--field VALUE ...]",
    )
    parser.add_argument("--log_level", "--log-level", metavar="LEVEL",
                        help=f"Console log level: {', '.join(LOG_LEVELS)} (default: warning; debug also shows the "
                        "traceback of an error).")
    return parser


def parse_train_args(argv: list[str] | None = None, exit_on_error: bool = False):
    """Parse `train` arguments (`--config FILE.yaml` and `--field VALUE` flags, as `trl.TrlParser` reads them).

    Args:
        argv (`list[str]`, *optional*): the arguments (default: `sys.argv[1:]`).
        exit_on_error (`bool`, *optional*, defaults to `False`): for scripts: print a mistake as one line
            (`script.py: error: ...`) and exit with code 2 instead of raising `CLIError`.

    Returns:
        `tuple`: (`SafeDDPOGRPOConfig`, `ModelArguments`, `DataArguments`, `RewardArguments`, `OutputArguments`).
    """
    parser = _parser("train", _train_groups(), "Online GRPO safety post-training of Stable Diffusion "
                     "(SafeDiffusion-R1).", exit_on_error)
    config, model, data, reward, output = parser.parse_args_and_config(argv)
    try:
        for name in ("reward", "clip_backend", "steering_mode"):
            _check_choice(reward, name)
        if output.log_images_every < 1:
            raise CLIError(f"log_images_every must be >= 1, got {output.log_images_every}")
    except CLIError as err:
        parser.error(str(err))
    return config, model, data, reward, output


def parse_eval_args(argv: list[str] | None = None, exit_on_error: bool = False):
    """Parse `evaluate` arguments (as [`parse_train_args`]). Returns (`EvalArguments`, `RewardArguments`)."""
    parser = _parser("evaluate", _eval_groups(), "Generate images for a prompt set and score them "
                     "(NudeNet, Q16, CLIP, toy world).", exit_on_error)
    args, reward = parser.parse_args_and_config(argv)
    try:
        _check_eval_args(args, reward)
    except CLIError as err:
        parser.error(str(err))
    return args, reward


def _check_eval_args(args: EvalArguments, reward: RewardArguments) -> None:
    unknown = [m for m in args.metrics if m not in METRICS]
    if unknown:
        raise CLIError(f"metrics: unknown metric {unknown[0]!r}{suggest(unknown[0], METRICS)} (choose from {METRICS})")
    if "q16" in args.metrics and not args.q16_prompts:
        raise CLIError("metrics: q16 needs --q16_prompts (the Q16 prompt-embedding file, e.g. prompts.p)")
    if args.table_format not in ("jsonl", "parquet"):
        raise CLIError(f"table_format must be 'jsonl' or 'parquet', got {args.table_format!r}")
    if args.dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise CLIError(f"dtype must be 'auto', 'float32', 'float16' or 'bfloat16', got {args.dtype!r}")
    for name in ("images_per_prompt", "batch_size", "num_inference_steps"):
        if getattr(args, name) < 1:
            raise CLIError(f"{name} must be >= 1, got {getattr(args, name)}")
    _check_choice(reward, "clip_backend")
    _check_choice(reward, "steering_mode")


_CHOICES = {"reward": REWARDS, "clip_backend": CLIP_BACKENDS, "steering_mode": ("translate", "projection")}


def _check_choice(obj, name: str):
    value = getattr(obj, name)
    if value not in _CHOICES[name]:
        raise CLIError(f"{name} must be one of {_CHOICES[name]}, got {value!r}{suggest(str(value), _CHOICES[name])}")


# ----------------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------------


def brightness(images, prompts, prompt_metadata):
    """Mean pixel value of each image: a reward with a known direction, for smoke runs."""
    return images.float().mean(dim=(1, 2, 3)), {}


TOY_ANCHOR_PRESET = "toy-red"


def _field_default(cls, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def build_clip_steering_reward(args: RewardArguments, device="cpu"):
    """A `CLIPSteeringReward` from the reward arguments.

    With `clip_backend='toy'` and `anchors` left at its default (the nudity preset, meaningless to the toy CLIP), the
    anchors are the toy world's `toy-red` preset; `args.anchors` is updated so that the saved config says so.
    """
    from .rewards.clip_steering import CLIPSteeringReward

    if args.clip_backend == "toy" and args.anchors == _field_default(RewardArguments, "anchors"):
        logger.info("clip_backend='toy': using the toy anchors (anchors='%s'); set anchors to choose others",
                    TOY_ANCHOR_PRESET)
        args.anchors = TOY_ANCHOR_PRESET
    kwargs = {"anchors": args.anchors, "alpha": args.alpha, "mode": args.steering_mode}
    if args.clip_backend == "open_clip":
        return CLIPSteeringReward.from_open_clip(
            args.clip_model, pretrained=args.clip_pretrained, model_config=args.clip_model_config, device=device, **kwargs
        )
    if args.clip_backend == "transformers":
        return CLIPSteeringReward.from_transformers(args.clip_model, device=device, **kwargs)
    try:
        from .toy.clip import toy_steering_reward
    except ImportError as err:
        raise CLIError("clip_backend='toy' needs trl_safediffusion.toy.clip, which is not available in this "
                       "installation") from err
    return toy_steering_reward(device=device, **kwargs)


def build_reward(args: RewardArguments, device="cpu"):
    """The training reward named by `args.reward`."""
    if args.reward == "brightness":
        return brightness
    return build_clip_steering_reward(args, device=device)


def _save_resolved_config(path: str, objects) -> None:
    import yaml

    merged: dict[str, Any] = {}
    for obj in objects:
        for f in dataclasses.fields(obj):
            if "token" in f.name:
                continue
            merged[f.name] = getattr(obj, f.name)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(merged, f, sort_keys=False)


def process_state():
    """The `accelerate.PartialState` of this process, created the way the trainers create theirs.

    Build it (or anything that asks accelerate for the process state) before a trainer only through this function:
    accelerate's state is created once per process, and torchrun-launched ranks on a machine without a GPU only join
    one job when it is created with `cpu=True`. Created with the defaults, every rank stays a separate rank 0.
    """
    from accelerate import PartialState

    from .ddpo_trainer import _cpu_only_multiprocess

    return PartialState(cpu=True) if _cpu_only_multiprocess() else PartialState()


def _hub_offline() -> bool:
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in TRUE_WORDS


def _offline_hint() -> str:
    """Why a model or dataset that is not on this machine could not be fetched."""
    if _hub_offline():
        return ("; HF_HUB_OFFLINE is set, so nothing could be downloaded: pass a local folder or file, or unset "
                "HF_HUB_OFFLINE (once online, `hf download <id>` fills the cache)")
    return "; it is not on this machine and could not be downloaded: check the id, the network and `hf auth login`"


_PROMPT_FILE_EXTENSIONS = (".txt", ".csv", ".jsonl", ".json")


def load_train_prompts(data_args: DataArguments, prompt_column: str):
    """The training prompts of `data_args` with the prompt text in a `prompt` column; `CLIError` for a missing
    file, a missing column or a dataset that cannot be loaded."""
    from .data import load_prompt_dataset

    source = data_args.dataset
    looks_like_file = source.lower().endswith(_PROMPT_FILE_EXTENSIONS) or source.startswith((".", "/", "~"))
    if looks_like_file and not os.path.exists(os.path.expanduser(source)):
        raise CLIError(f"dataset: the prompt file {source} does not exist (relative to {os.getcwd()}); set --dataset to "
                       "a .txt/.csv/.jsonl/.json file or a Hub dataset id")
    try:
        dataset = load_prompt_dataset(os.path.expanduser(source), prompt_column=prompt_column,
                                      split=data_args.dataset_split, config_name=data_args.dataset_config)
    except ValueError as err:
        hint = ""
        if f"prompt_column {prompt_column!r}" in str(err):
            hint = "; set --prompt_column to the column that holds the prompts"
        raise CLIError(f"dataset {source}: {err}{hint}") from None
    except OSError as err:  # missing Hub dataset, no network, HF_HUB_OFFLINE (ConnectionError is an OSError)
        raise CLIError(f"dataset: cannot load {source!r} ({err}){_offline_hint()}") from None
    if data_args.max_prompts is not None:
        dataset = dataset.select(range(min(data_args.max_prompts, len(dataset))))
    return dataset


def check_output_folders(config) -> None:
    """`CLIError` naming the field unless every folder the run writes (`output_dir`, `logdir`, the project and
    logging folders) is writable or can be created; nothing is created."""
    from .ddpo_trainer import check_writable_folder

    folders = [("output_dir", config.output_dir)]
    project_dir = config.project_kwargs.get("project_dir")
    folders.append(("project_kwargs['project_dir']", project_dir) if project_dir else ("logdir", config.logdir))
    folders.append(("project_kwargs['logging_dir']", config.project_kwargs.get("logging_dir")))
    for name, folder in folders:
        if folder:
            try:
                check_writable_folder(folder, name)
            except ValueError as err:
                raise CLIError(str(err)) from None


def _caused_by_os_error(err: BaseException) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _load_or_explain(what: str, name: str, load):
    """`load()`, with a model that cannot be found or fetched (an `OSError`) reported as a `CLIError` naming the
    field `what`."""
    try:
        return load()
    except (OSError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not _caused_by_os_error(err):  # open_clip wraps download errors
            raise
        if os.path.isdir(os.path.expanduser(name)):
            raise CLIError(f"{what}: cannot load the folder {name} ({err})") from None
        raise CLIError(f"{what}: cannot load {name!r} ({err}){_offline_hint()}") from None


def _check_model_cached(what: str, repo_id: str, revision: str | None) -> None:
    """A model that is neither a local folder nor a Hub id is an error; offline, a Hub id must be in the local cache:
    say so at once (diffusers would retry and log first)."""
    if os.path.exists(os.path.expanduser(repo_id)):
        return
    if repo_id.startswith((".", "/", "~")) or repo_id.count("/") != 1:
        raise CLIError(f"{what}: the folder {repo_id} does not exist (relative to {os.getcwd()}) and {repo_id!r} is not "
                       "a Hub id (namespace/name)")
    if not _hub_offline():
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(repo_id, "model_index.json", revision=revision), str):
        raise CLIError(f"{what}: {repo_id!r} is not a local folder and is not in the Hub cache{_offline_hint()}")


def _resolve_resume(config):
    """The config with `resume_from` resolved to a local checkpoint folder (a Hub checkpoint is downloaded now, before
    any model is loaded); `CLIError` naming `resume_from` when it cannot be."""
    from .ddpo_trainer import resolve_checkpoint

    try:
        path = resolve_checkpoint(config.resume_from, token=config.hub_token)
    except ValueError as err:
        raise CLIError(str(err)) from None
    except OSError as err:  # HubDownloadError, no complete checkpoint in the repo (FileNotFoundError)
        hint = _offline_hint() if not os.path.exists(config.resume_from) else ""
        raise CLIError(f"resume_from={config.resume_from!r}: {err}{hint}") from None
    return dataclasses.replace(config, resume_from=path)


def _model_family_and_kwargs(model_path: str, model_args: ModelArguments):
    """The model family of `pretrained_model` (from its `model_index.json`) and its adapter's keyword arguments; a
    family option (`FAMILY_OPTIONS`) set for a family that does not take it is a `CLIError` naming both."""
    from .pipelines.loading import model_family

    kwargs = {"pretrained_model_revision": model_args.pretrained_revision, "use_lora": model_args.use_lora,
              "lora_rank": model_args.lora_rank, "lora_alpha": model_args.lora_alpha}
    if model_args.trainable_modules is not None:
        kwargs["trainable_modules"] = model_args.trainable_modules
    options = {name: getattr(model_args, name) for name in FAMILY_OPTIONS if getattr(model_args, name) is not None}
    try:
        family = model_family(model_path, revision=model_args.pretrained_revision, argument="pretrained_model")
        family.check_kwargs({**kwargs, **options})
    except ValueError as err:
        raise CLIError(str(err)) from None
    return family, {**kwargs, **options}


def _push_failure_message(err, output_dir: str, config) -> str:
    private = " --private" if config.hub_private_repo else ""
    return (f"the model was trained, but pushing it to the Hub {err.repo_type} repo {err.repo_id!r} failed: "
            f"{err.cause}. The model and train_config.yaml are saved in {output_dir}; push them again with "
            f"`hf upload {err.repo_id} {output_dir} .{private}` (after `hf auth login`)")


def run_train(argv: list[str] | None = None) -> str:
    """`trl-safediffusion train`: returns the output folder."""
    config, model_args, data_args, reward_args, out_args = parse_train_args(argv)
    if not data_args.dataset:
        raise CLIError("dataset: `train` needs prompts; set dataset to a Hub dataset id or a .txt/.csv/.jsonl file")
    from .grpo_trainer import SafeDDPOGRPOTrainer
    from .hooks import ImageGridHook
    from .hub import HubPushError

    state = process_state()
    logger.info("process %d of %d, device %s", state.process_index, state.num_processes, state.device)
    check_output_folders(config)
    dataset = load_train_prompts(data_args, config.prompt_column)
    trainer_config = config
    if config.prompt_column != "prompt":
        trainer_config = dataclasses.replace(config, prompt_column="prompt")  # load_prompt_dataset renamed the column
    if config.resume_from:
        trainer_config = _resolve_resume(trainer_config)
    logger.info("training prompts: %d from %s", len(dataset), data_args.dataset)
    model_path = model_args.pretrained_model
    if model_path == "toy":
        from .toy.pipeline import toy_pipeline_path

        model_path = toy_pipeline_path()
    _check_model_cached("pretrained_model", model_path, model_args.pretrained_revision)
    family, pipeline_kwargs = _model_family_and_kwargs(model_path, model_args)
    reward = _load_or_explain("clip_model", reward_args.clip_model, lambda: build_reward(reward_args, state.device))
    try:
        pipeline = _load_or_explain("pretrained_model", model_path,
                                    lambda: family.load(model_path, **pipeline_kwargs))
    except ValueError as err:
        raise CLIError(str(err)) from None
    hook = None
    if out_args.log_images:
        hook = ImageGridHook(every_n_calls=out_args.log_images_every, label_column=config.label_column)
    try:
        trainer = SafeDDPOGRPOTrainer(trainer_config, reward, pipeline, train_dataset=dataset, image_samples_hook=hook)
    except ValueError as err:
        raise CLIError(str(err)) from None
    if hook is not None and state.is_main_process:
        hook.save_dir = os.path.join(trainer.project_dir, "samples")
    push_error = None
    try:
        trainer.train()
    except HubPushError as err:  # raised on the main process only, after training and before the local save
        push_error = err
        trainer.accelerator.wait_for_everyone()  # the other processes wait at the end of push_to_hub
    output_dir = config.output_dir or os.path.join(trainer.project_dir, "final_model")
    trainer.save_pretrained(output_dir, fuse_lora=out_args.fuse_lora)
    trainer.end_training()
    if state.is_main_process:
        _save_resolved_config(os.path.join(output_dir, "train_config.yaml"),
                              (config, model_args, data_args, reward_args, out_args))
        print(f"{PROG} train: model and train_config.yaml saved to {output_dir}")
    if push_error is not None:
        raise CLIError(_push_failure_message(push_error, output_dir, config))
    return output_dir


def _torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def build_metrics(args: EvalArguments, reward_args: RewardArguments, device: str) -> list:
    """Metric objects for `args.metrics`."""
    from . import evaluation as ev

    metrics = []
    for name in args.metrics:
        if name == "nudenet":
            metrics.append(ev.NudeNetMetric(threshold=args.nudenet_threshold))
        elif name == "q16":
            metrics.append(ev.Q16Classifier.from_open_clip(args.q16_prompts, args.q16_clip_model,
                                                           args.q16_clip_pretrained, device=device))
        elif name == "clip":
            metrics.append(ev.CLIPMetrics(build_clip_steering_reward(reward_args, device=device)))
        elif name == "toy":
            from .toy.metrics import ToyWorldMetrics

            metrics.append(ToyWorldMetrics())
    return metrics


def run_evaluate(argv: list[str] | None = None):
    """`trl-safediffusion evaluate`: returns the `EvaluationResult`."""
    args, reward_args = parse_eval_args(argv)
    import torch

    from . import evaluation as ev

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from .ddpo_trainer import check_writable_folder

    try:
        check_writable_folder(args.output_dir, "output_dir")
    except ValueError as err:
        raise CLIError(str(err)) from None
    try:
        prompt_source = args.prompts
        if args.prompts == "toy" or args.prompts.startswith("toy:"):
            from .toy.prompts import toy_prompt_set

            prompt_source = toy_prompt_set(args.prompts)
        prompt_set = ev.load_eval_prompts(prompt_source, categories=args.i2p_categories, hard=args.i2p_hard,
                                          limit=args.limit, prompt_column=args.prompt_column)
    except ValueError as err:
        raise CLIError(f"prompts {args.prompts}: {err}") from None
    except OSError as err:
        raise CLIError(f"prompts: cannot load {args.prompts!r} ({err}){_offline_hint()}") from None
    model_path = args.model
    if args.model == "toy":
        from .toy.pipeline import toy_pipeline_path

        model_path = toy_pipeline_path()
    else:
        _check_model_cached("model", args.model, args.revision)
    metrics = _load_or_explain("clip_model", reward_args.clip_model, lambda: build_metrics(args, reward_args, device))
    pipeline = _load_or_explain("model", args.model, lambda: ev.load_pipeline(
        model_path, lora=args.lora, device=device, torch_dtype=_torch_dtype(args.dtype, device), revision=args.revision))
    result = ev.evaluate(
        pipeline, prompt_set, args.output_dir, metrics=metrics, images_per_prompt=args.images_per_prompt,
        seed=args.seed, batch_size=args.batch_size, num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale, height=args.height, width=args.width,
        negative_prompt=args.negative_prompt, seed_column=args.seed_column, save_images=args.save_images,
        grid_size=args.grid_size, table_format=args.table_format,
        model_name=args.model + (f" + LoRA {args.lora}" if args.lora else ""), push_to_hub=args.push_to_hub,
        hub_token=args.hub_token,
    )
    print(json.dumps(ev.flatten_scalars(result.results["metrics"]), indent=2))
    return result


def run_demo(argv: list[str] | None = None) -> dict:
    """`trl-safediffusion demo`: the embedded toy-world demo (train, evaluate, print the before/after summary), with
    the flags, defaults and output folder of `make demo` (`examples/toy_demo.py`); returns its metrics."""
    try:
        from .toy.demo import main as toy_demo_main
    except ImportError as err:
        raise CLIError("demo: trl_safediffusion.toy.demo is not available in this installation; run "
                       "`python examples/toy_demo.py` from a source checkout") from err
    return toy_demo_main(argv, prog=f"{PROG} demo")


COMMANDS = {"train": run_train, "evaluate": run_evaluate, "demo": run_demo}

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def configure_logging(argv: list[str]) -> list[str]:
    """Set the console log level from a `--log_level LEVEL` (or `--log-level`) flag anywhere in `argv` and return `argv` without it.

    The default is `warning` (or the `LOGLEVEL` environment variable): progress bars, the per-epoch summary and the
    commands' own output still show; `info` adds what each step does.
    """
    level = os.environ.get("LOGLEVEL", "warning")
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("--log_level", "--log-level"):
            level = next(args, None)
            if level is None or level.startswith("-"):
                raise CLIError(f"--log_level needs a value: one of {', '.join(LOG_LEVELS)}")
        elif arg.startswith(("--log_level=", "--log-level=")):
            level = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if level.lower() not in LOG_LEVELS:
        raise CLIError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {level!r}{suggest(level.lower(), LOG_LEVELS)}")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level.upper())
    return rest


def main(argv: list[str] | None = None) -> int:
    """Entry point of `trl-safediffusion`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {PROG} {{train,evaluate,demo}} [--config FILE] [--field VALUE ...]\n\n"
              "  train     online GRPO safety post-training (SafeDiffusion-R1); works under accelerate launch / torchrun\n"
              "  evaluate  generate images for a prompt set and score them (NudeNet, Q16, CLIP, toy world)\n"
              "  demo      the embedded toy-world demo on CPU\n\n"
              f"`{PROG} <command> --help` lists every field with its help text.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"{PROG}: error: unknown command {command!r}{suggest(command, COMMANDS)} (choose from "
              f"{', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    try:
        rest = configure_logging(rest)
        COMMANDS[command](rest)
    except (CLIError, FileNotFoundError, ImportError) as err:
        logger.debug("%s %s failed", PROG, command, exc_info=True)
        print(f"{PROG} {command}: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {command}: interrupted", file=sys.stderr)  # the trainer has logged what was saved
        return 130
    return 0




if __name__ == "__main__":
    sys.exit(main())
