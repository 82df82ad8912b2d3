import sys
from pathlib import Path

# The package is used from the source tree (tools/build-library copies the library into it).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
