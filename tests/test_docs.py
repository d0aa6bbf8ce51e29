"""The docs' numbers from toy runs are generated (scripts/refresh_docs.py): the committed text is what the script
writes, so a change of the code that moves a quoted number fails here until the docs are refreshed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from tests.helpers import ROOT


def load_script():
    spec = importlib.util.spec_from_file_location("refresh_docs", ROOT / "scripts" / "refresh_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_docs_hold_what_the_toy_twins_print(tmp_path):
    done = subprocess.run([sys.executable, "scripts/refresh_docs.py", "--check", "--runs", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert "the docs hold what the toy runs print" in done.stdout


def test_a_stale_block_or_count_is_rewritten():
    script = load_script()
    stale = ("a\n<!-- refresh_docs: x -->\nold numbers\n<!-- /refresh_docs: x -->\nb\n"
             "print(synthact.grid(job))   # 14 cells: 7 target kinds x 2 scans\n")
    text = script.refreshed(stale, "README.md", {"x": "new numbers"})
    assert "<!-- refresh_docs: x -->\nnew numbers\n<!-- /refresh_docs: x -->" in text and "old" not in text
    assert "# 21 cells: 7 target kinds x 3 scans" in text  # jobs/paper-toy.yaml's grid
    assert script.refreshed(text, "README.md", {"x": "new numbers"}) == text
