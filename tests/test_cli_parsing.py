from dataclasses import dataclass, field

import pytest

from trl_safediffusion.cli import CLIError, convert_value, main, parse_eval_args, parse_train_args


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_then_flags_override(tmp_path):
    path = write(tmp_path, "num_generations: 4\ntrain_learning_rate: 1e-5\nsample_batch_size: 4\nuse_lora: false\n"
                           "dataset: prompts.txt\nalpha: 0.3\nlog_with: tensorboard\ntracker_kwargs: {wandb: {entity: me}}\n")
    config, model, data, reward, output = parse_train_args(
        ["--config", path, "--train_learning_rate", "3e-6", "--alpha", "0.7", "--reward_weights", "1,0.5"]
    )
    assert config.num_generations == 4
    assert config.train_learning_rate == pytest.approx(3e-6)  # flag wins over the file
    assert reward.alpha == pytest.approx(0.7)
    assert model.use_lora is False
    assert data.dataset == "prompts.txt"
    assert config.tracker_kwargs == {"wandb": {"entity": "me"}}
    assert config.reward_weights == [1.0, 0.5]
    assert config.sample_eta == 1.0  # untouched default


def test_yaml_string_float_and_bool_flag(tmp_path):
    path = write(tmp_path, "train_learning_rate: 1e-5\n")  # YAML 1.1 reads this as a string
    config, model, *_ = parse_train_args(["--config", path, "--use_lora", "--share_initial_noise", "false"])
    assert isinstance(config.train_learning_rate, float) and config.train_learning_rate == pytest.approx(1e-5)
    assert model.use_lora is True
    assert config.share_initial_noise is False


def test_unknown_yaml_key_names_it_and_suggests(tmp_path):
    path = write(tmp_path, "num_generation: 8\n")
    with pytest.raises(CLIError, match=r"unknown field 'num_generation'.*did you mean num_generations"):
        parse_train_args(["--config", path])


def test_unknown_flag_suggests():
    with pytest.raises(CLIError, match=r"unknown option --train_learning_rat; did you mean --train_learning_rate"):
        parse_train_args(["--train_learning_rat", "1e-4"])


def test_bad_value_names_field(tmp_path):
    path = write(tmp_path, "sample_num_steps: fifty\n")
    with pytest.raises(CLIError, match=r"sample_num_steps: expected int, got 'fifty' \(from .*recipe.yaml\)"):
        parse_train_args(["--config", path])
    with pytest.raises(CLIError, match="use_lora: expected bool"):
        parse_train_args(["--use_lora", "maybe"])


def test_cross_field_error_from_config_is_reported():
    with pytest.raises(CLIError, match="must be a multiple of num_generations"):
        parse_train_args(["--num_generations", "3"])
    with pytest.raises(CLIError, match="reward must be one of"):
        parse_train_args(["--reward", "aesthetics"])


def test_convert_value_types():
    assert convert_value("x", "none", int | None) is None
    assert convert_value("x", 3.0, int) == 3
    assert convert_value("x", ["a,b", "c"], list[str]) == ["a", "b", "c"]
    assert convert_value("x", '{"a": 1}', dict) == {"a": 1}
    with pytest.raises(CLIError, match="x: expected float"):
        convert_value("x", True, float)


def test_help_shows_config_help_text(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_train_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "Group size G: images sampled per prompt" in out  # SafeDDPOGRPOConfig.num_generations help
    assert "PPO clip range of the probability ratio" in out  # DDPOConfig help
    assert "Steering strength alpha" in out  # script argument help
    assert "default: 16" in out


def test_main_reports_errors_with_exit_code(capsys):
    assert main(["train", "--sample_eta", "0"]) == 2
    err = capsys.readouterr().err
    assert "sample_eta" in err and "error" in err
    assert main(["trian"]) == 2
    assert "did you mean train" in capsys.readouterr().err


def test_eval_args(tmp_path):
    args, reward = parse_eval_args(["--metrics", "nudenet", "clip", "--i2p_categories", "sexual,violence", "--limit", "5",
                                    "--i2p_hard", "true"])
    assert args.metrics == ["nudenet", "clip"]
    assert args.i2p_categories == ["sexual", "violence"]
    assert args.i2p_hard is True and args.limit == 5
    with pytest.raises(CLIError, match="unknown metric 'nudnet'.*did you mean nudenet"):
        parse_eval_args(["--metrics", "nudnet"])
    with pytest.raises(CLIError, match="q16 needs --q16_prompts"):
        parse_eval_args(["--metrics", "q16"])


def test_toy_clip_backend_builds_the_toy_reward_with_the_given_steering():
    from trl_safediffusion.cli import RewardArguments, build_clip_steering_reward

    reward = build_clip_steering_reward(RewardArguments(clip_backend="toy", anchors="toy-red", alpha=0.3,
                                                        steering_mode="translate"))
    info = reward.describe()
    assert info["model"] == "toy-clip" and info["alpha"] == 0.3 and info["mode"] == "translate"
    assert info["anchors"]["name"] == "toy-red"


# ----------------------------------------------------------------------------------------------------------------------
# What trl.TrlParser accepts: dash names, --no_x, --config, the env: block
# ----------------------------------------------------------------------------------------------------------------------


def test_dash_and_underscore_names_are_the_same_option():
    config, model, data, reward, output = parse_train_args(
        ["--train-learning-rate", "3e-6", "--num-generations", "4", "--sample_batch_size", "4", "--steering-mode",
         "projection", "--log-images-every", "2"])
    assert config.train_learning_rate == pytest.approx(3e-6) and config.num_generations == 4
    assert reward.steering_mode == "projection" and output.log_images_every == 2
    args, _ = parse_eval_args(["--images-per-prompt", "2", "--metrics", "clip", "toy"])
    assert args.images_per_prompt == 2 and args.metrics == ["clip", "toy"]


def test_no_prefix_sets_a_boolean_false():
    config, model, *_ = parse_train_args(["--no_use_lora", "--no-share-initial-noise"])
    assert model.use_lora is False and config.share_initial_noise is False
    config, model, *_ = parse_train_args(["--no_use_lora", "--use_lora"])  # the last one wins
    assert model.use_lora is True


def test_config_equals_form_and_dash_keys(tmp_path):
    path = write(tmp_path, "num-generations: 4\nsample_batch_size: 4\n")
    config, *_ = parse_train_args([f"--config={path}"])
    assert config.num_generations == 4


def test_env_block_sets_environment_variables_before_the_fields(tmp_path, monkeypatch):
    monkeypatch.delenv("TRLSD_TEST_TOKENIZERS", raising=False)
    monkeypatch.delenv("TRLSD_TEST_NUMBER", raising=False)
    path = write(tmp_path, "env:\n  TRLSD_TEST_TOKENIZERS: false\n  TRLSD_TEST_NUMBER: 3\nnum_generations: 8\n")
    config, *_ = parse_train_args(["--config", path])
    import os

    assert os.environ["TRLSD_TEST_TOKENIZERS"] == "False" and os.environ["TRLSD_TEST_NUMBER"] == "3"  # as TrlParser
    assert config.num_generations == 8
    bad = write(tmp_path, "env: [A, B]\n", name="bad.yaml")
    with pytest.raises(CLIError, match=r"env: expected a mapping .*\(from .*bad.yaml\)"):
        parse_train_args(["--config", bad])


def test_errors_name_the_flag_as_typed_and_suggest_in_the_same_spelling(capsys):
    with pytest.raises(CLIError, match=r"^--sample-num-steps: expected int, got 'fifty'$"):
        parse_train_args(["--sample-num-steps", "fifty"])
    with pytest.raises(CLIError, match=r"unknown option --train-learning-rat; did you mean --train-learning-rate"):
        parse_train_args(["--train-learning-rat", "1e-4"])
    # an argparse-level mistake (a flag without its value) is one line too, with the command's prefix
    assert main(["train", "--sample_eta"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["trl-safediffusion train: error: argument --sample_eta/--sample-eta: expected one argument"]


def test_log_level_with_a_dash(capsys):
    import logging

    root = logging.getLogger()
    before = root.level
    try:
        assert main(["train", "--log-level", "info", "--sample_eta", "0"]) == 2
        assert root.level == logging.INFO
    finally:
        root.setLevel(before)


def test_the_parser_is_a_trl_parser():
    from trl import TrlParser

    from trl_safediffusion.argparsing import SafeDiffusionParser
    from trl_safediffusion.cli import ModelArguments

    parser = SafeDiffusionParser([ModelArguments], raise_errors=True)
    assert isinstance(parser, TrlParser)
    (model,) = parser.parse_args_into_dataclasses(["--lora-rank", "8"])
    assert model.lora_rank == 8
    (model,) = parser.parse_dict({"lora_rank": "16", "use_lora": "false"})
    assert model.lora_rank == 16 and model.use_lora is False
    assert parser.set_defaults_with_config(lora_rank=2, nothing=1) == ["--nothing", "1"]
    (model,) = parser.parse_args_and_config([])
    assert model.lora_rank == 2


@dataclass
class _ReadsEnv:
    level: str = field(default="", metadata={"help": "Copied from TRLSD_TEST_LEVEL when built."})

    def __post_init__(self):
        import os

        self.level = os.environ.get("TRLSD_TEST_LEVEL", "")


def test_env_block_is_set_before_the_dataclasses_are_built(tmp_path, monkeypatch):
    from trl_safediffusion.argparsing import SafeDiffusionParser

    monkeypatch.delenv("TRLSD_TEST_LEVEL", raising=False)
    path = write(tmp_path, "env:\n  TRLSD_TEST_LEVEL: high\n")
    (args,) = SafeDiffusionParser([_ReadsEnv], raise_errors=True).parse_args_and_config(["--config", path])
    assert args.level == "high"
