import sys
from pathlib import Path

# the package lives under agent/ (setuptools package-dir); work without an editable install too
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "agent"))
