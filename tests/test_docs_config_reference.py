import importlib.util
import os

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "gen_config_docs.py")
DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "configuration.md")


def _load_generator():
    """scripts/gen_config_docs.py, the docs generator (not part of the library)."""
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


config_reference_markdown = _load_generator().config_reference_markdown


def test_configuration_reference_in_sync():
    with open(DOC, encoding="utf-8") as f:
        committed = f.read()
    assert committed == config_reference_markdown() + "\n", (
        "docs/configuration.md is stale: run `python scripts/gen_config_docs.py`"
    )


def test_reference_lists_every_field_with_help():
    from dataclasses import fields

    from trl_safediffusion.grpo_config import SafeDDPOGRPOConfig

    text = config_reference_markdown()
    for f in fields(SafeDDPOGRPOConfig):
        assert f"`{f.name}`" in text
        assert f.metadata.get("help"), f"{f.name} has no help text"
