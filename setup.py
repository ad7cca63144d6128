"""Builds as pyproject.toml says, and puts the playground notebook into the package, so that the classroom app
(``python -m superdiff.app``) runs from an installed wheel too; in a checkout it reads notebooks/ itself."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PLAYGROUND = Path("notebooks", "04_playground.ipynb")


class BuildPy(build_py):
    """build_py, plus superdiff/notebooks/04_playground.ipynb (the app's page) in the wheel."""

    def run(self):
        super().run()
        if not self.editable_mode:  # an editable install reads the checkout's notebooks/
            target = Path(self.build_lib, "superdiff", "notebooks")
            self.mkpath(str(target))
            self.copy_file(str(PLAYGROUND), str(target / PLAYGROUND.name))


setup(cmdclass={"build_py": BuildPy})
