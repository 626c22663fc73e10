"""The README documents every setting and metric, and opens with the two commands."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_tables_match_code():
    r = subprocess.run([sys.executable, str(ROOT / "scripts/gen_docs.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_readme_opens_with_demo_and_test_commands_and_ci_runs_the_test_command():
    head = (ROOT / "README.md").read_text().split("```")[1]
    assert "scripts/demo" in head and "scripts/test" in head
    assert "scripts/test" in (ROOT / ".ci/run").read_text()
