"""setuptools entry for one thing pyproject.toml cannot say: stamp the git commit into a built wheel.

An installed wheel has no checkout to ask, so `build_py` writes qwen_eval/_build_info.json (the
commit and whether tracked files differed from it) into what gets packaged; results.json then
names the commit it ran from (qwen_eval/provenance.py). Without git at build time the stamp says
"unknown".
"""

import json
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


class BuildWithStamp(build_py):
    def run(self) -> None:
        super().run()
        commit = _git("rev-parse", "HEAD")
        status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
        stamp = {"commit": commit or "unknown", "dirty": bool(status) if commit else None}
        target = Path(self.build_lib) / "qwen_eval" / "_build_info.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(stamp) + "\n", encoding="utf-8")


setup(cmdclass={"build_py": BuildWithStamp})
