import os

from trl_safediffusion.cli import config_reference_markdown

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "configuration.md")


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
