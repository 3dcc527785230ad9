"""Regenerate docs/configuration.md from the configuration dataclasses' help text.

    python scripts/gen_config_docs.py          # write the file
    python scripts/gen_config_docs.py --check  # exit 1 if the committed file is stale
"""

import argparse
import os
import sys

from trl_safediffusion.cli import config_reference_markdown

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "configuration.md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = parser.parse_args()
    text = config_reference_markdown() + "\n"
    if args.check:
        with open(DOC, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{DOC} is stale; run python scripts/gen_config_docs.py", file=sys.stderr)
                return 1
        return 0
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
