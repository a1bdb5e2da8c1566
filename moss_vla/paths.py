"""Where the hydra configs live (the single source of defaults).

An installed wheel carries them inside the package (moss_vla/configs, put there by setup.py); a source
checkout or an editable install keeps them in configs/ at the repository root.
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
REPO_ROOT = _PACKAGE.parent  # the checkout (benchmarks write their results under it)
CONFIG_DIR = _PACKAGE / "configs" if (_PACKAGE / "configs").is_dir() else REPO_ROOT / "configs"
