"""Everything about the distribution is in pyproject.toml; this file only ships the hydra configs.

configs/ sits at the top of the source tree (one folder of defaults for every command), which is outside
any import package, so setuptools' package data cannot reach it. A wheel gets a copy at
moss_vla/configs, where moss_vla/paths.py looks first (tests/test_install.py builds and runs one).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install reads configs/ from the checkout
            target = Path(self.build_lib) / "moss_vla" / "configs"
            shutil.rmtree(target, ignore_errors=True)  # a config deleted since the last build must not linger
            shutil.copytree(Path(__file__).parent / "configs", target)


setup(cmdclass={"build_py": BuildPyWithConfigs})
